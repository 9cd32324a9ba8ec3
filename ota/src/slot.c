#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/fs.h>
#include <flotilla/hash.h>
#include <flotilla/slot.h>
#include <flotilla/util.h>

struct ota_slots {
	char *root; /* MODELS_DIR/<name> */
	char *dir_a;
	char *dir_b;
	char *link;
};

void ota_slots_free(struct ota_slots *s)
{
	if (!s)
		return;
	free(s->root);
	free(s->dir_a);
	free(s->dir_b);
	free(s->link);
	free(s);
}

FL_DEFINE_CLEANUP(struct ota_slots, ota_slots_free)

static int read_current(const char *link, char *ret)
{
	char buf[8];
	ssize_t n = readlink(link, buf, sizeof(buf));
	if (n < 0) {
		if (errno == ENOENT) {
			*ret = 0;
			return 0;
		}
		/* EINVAL: exists but is not a symlink */
		return errno == EINVAL ? -FL_EFORMAT : -errno;
	}
	if (n != 1 || (buf[0] != 'a' && buf[0] != 'b'))
		return -FL_EFORMAT;
	*ret = buf[0];
	return 0;
}

int ota_slots_open(const char *models_dir, const char *name, struct ota_slots **ret)
{
	if (!fl_name_valid(name, OTA_MANIFEST_MAX_NAME))
		return -EINVAL;
	_cleanup_(ota_slots_freep) struct ota_slots *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->root = fl_path_join(models_dir, name);
	if (!s->root)
		return -ENOMEM;
	s->dir_a = fl_path_join(s->root, "a");
	s->dir_b = fl_path_join(s->root, "b");
	s->link = fl_path_join(s->root, "current");
	if (!s->dir_a || !s->dir_b || !s->link)
		return -ENOMEM;
	int r = fl_mkdir_p(s->dir_a, 0755);
	if (r < 0)
		return r;
	r = fl_mkdir_p(s->dir_b, 0755);
	if (r < 0)
		return r;
	char cur;
	r = read_current(s->link, &cur);
	if (r < 0)
		return r;
	*ret = fl_steal_ptr(s);
	return 0;
}

char ota_slots_current(const struct ota_slots *s)
{
	char cur = 0;
	if (read_current(s->link, &cur) < 0)
		return 0;
	return cur;
}

char ota_slots_inactive(const struct ota_slots *s)
{
	return ota_slots_current(s) == 'a' ? 'b' : 'a';
}

const char *ota_slots_dir(const struct ota_slots *s, char slot)
{
	return slot == 'a' ? s->dir_a : slot == 'b' ? s->dir_b : NULL;
}

const char *ota_slots_link(const struct ota_slots *s) { return s->link; }

int ota_slots_clear(struct ota_slots *s, char slot)
{
	const char *dir = ota_slots_dir(s, slot);
	if (!dir)
		return -EINVAL;
	if (ota_slots_current(s) == slot)
		return -FL_ESTATE;
	int r = fl_rm_rf(dir);
	if (r < 0)
		return r;
	r = FL_FAILPOINT("slot.clear.after_remove");
	if (r < 0)
		return r;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	return fl_fsync_dir(s->root);
}

int ota_slots_switch(struct ota_slots *s, char slot)
{
	if (slot != 'a' && slot != 'b')
		return -EINVAL;
	int r = FL_FAILPOINT("slot.switch.before");
	if (r < 0)
		return r;
	const char target[2] = {slot, '\0'};
	r = fl_symlink_atomic(target, s->link);
	if (r < 0)
		return r;
	return FL_FAILPOINT("slot.switch.after");
}

/* Count regular files under DIR and refuse anything else. */
static int scan_dir(const char *dir, const char *rel, size_t *count, char *bad, size_t bad_len,
		    int depth)
{
	if (depth > 32)
		return -FL_EPATH;
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	int r = 0;
	struct dirent *de;
	while (r == 0 && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		_cleanup_free_ char *p = fl_path_join(dir, de->d_name);
		_cleanup_free_ char *rp = *rel ? fl_asprintf("%s/%s", rel, de->d_name)
					       : strdup(de->d_name);
		if (!p || !rp) {
			r = -ENOMEM;
			break;
		}
		struct stat st;
		if (lstat(p, &st) < 0) {
			r = -errno;
			break;
		}
		if (S_ISDIR(st.st_mode)) {
			r = scan_dir(p, rp, count, bad, bad_len, depth + 1);
		} else if (S_ISREG(st.st_mode)) {
			(*count)++;
		} else {
			fl_strlcpy(bad, rp, bad_len);
			r = -FL_EPATH;
		}
	}
	closedir(d);
	return r;
}

int ota_slot_verify(const char *dir, const struct ota_manifest *m, const char **ret_bad)
{
	static __thread char bad[OTA_MANIFEST_MAX_PATH + 1];
	bad[0] = '\0';
	int r = 0;
	for (size_t i = 0; i < m->n_files && r == 0; i++) {
		const struct ota_manifest_file *f = &m->files[i];
		fl_strlcpy(bad, f->path, sizeof(bad));
		_cleanup_free_ char *p = fl_path_join(dir, f->path);
		if (!p)
			return -ENOMEM;
		struct stat st;
		if (lstat(p, &st) < 0) {
			r = errno == ENOENT ? -FL_EMISSING : -errno;
			break;
		}
		if (!S_ISREG(st.st_mode)) {
			r = -FL_EPATH;
			break;
		}
		if ((uint64_t)st.st_size != f->size) {
			r = -FL_ESIZE;
			break;
		}
		uint8_t h[FL_SHA256_LEN];
		r = fl_sha256_file(p, h, NULL);
		if (r == 0 && memcmp(h, f->sha256, sizeof(h)) != 0)
			r = -FL_EHASH;
	}
	if (r == 0) {
		bad[0] = '\0';
		size_t count = 0;
		r = scan_dir(dir, "", &count, bad, sizeof(bad), 0);
		if (r == 0 && count != m->n_files) {
			fl_strlcpy(bad, "(extra files)", sizeof(bad));
			r = -FL_EPATH;
		}
	}
	if (r < 0 && ret_bad)
		*ret_bad = bad;
	return r;
}

int ota_device_info_probe(struct ota_device_info *info, char *arch_buf, size_t arch_len)
{
	struct utsname u;
	struct sysinfo si;
	if (uname(&u) < 0 || sysinfo(&si) < 0)
		return -errno;
	fl_strlcpy(arch_buf, u.machine, arch_len);
	info->arch = arch_buf;
	info->ram_mb = (uint64_t)si.totalram * si.mem_unit / (1024 * 1024);
	info->accelerators = NULL;
	info->backends = NULL;
	return 0;
}

static const char *arch_canon(const char *a)
{
	static const char *const alias[][2] = {
		{"amd64", "x86_64"}, {"arm64", "aarch64"}, {"armhf", "armv7l"}, {"armv7", "armv7l"},
		{"i386", "i686"},
	};
	for (size_t i = 0; i < FL_ARRAY_SIZE(alias); i++)
		if (!strcmp(a, alias[i][0]))
			return alias[i][1];
	return a;
}

static bool in_list(const char *s, const char *const *list)
{
	for (; list && *list; list++)
		if (!strcmp(s, *list))
			return true;
	return false;
}

int ota_compat_check(const struct ota_manifest *m, const struct ota_device_info *dev, char *why,
		     size_t why_len)
{
	const struct ota_compat *c = &m->compat;
	if (c->n_arch > 0) {
		bool ok = false;
		for (size_t i = 0; i < c->n_arch && !ok; i++)
			ok = !strcmp(arch_canon(c->arch[i]), arch_canon(dev->arch));
		if (!ok) {
			snprintf(why, why_len, "arch %s not in the bundle's list (first: %s)",
				 dev->arch, c->arch[0]);
			return -FL_EINCOMPAT;
		}
	}
	if (c->min_ram_mb > dev->ram_mb) {
		snprintf(why, why_len, "needs %llu MiB RAM, device has %llu MiB",
			 (unsigned long long)c->min_ram_mb, (unsigned long long)dev->ram_mb);
		return -FL_EINCOMPAT;
	}
	if (c->accelerator && strcmp(c->accelerator, "none") != 0 &&
	    !in_list(c->accelerator, dev->accelerators)) {
		snprintf(why, why_len, "needs accelerator %s", c->accelerator);
		return -FL_EINCOMPAT;
	}
	if (c->backend && !in_list(c->backend, dev->backends)) {
		snprintf(why, why_len, "runtime backend %s not available on this device",
			 c->backend);
		return -FL_EINCOMPAT;
	}
	return 0;
}
