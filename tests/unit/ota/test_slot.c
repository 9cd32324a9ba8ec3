#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"
#include <flotilla/cleanup.h>
#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/hash.h>
#include <flotilla/slot.h>

static struct ota_manifest *manifest_for(const char *dir, const char *const *files, size_t n)
{
	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new("tiny", "1.0", 1, 1000, 2000, &m), 0);
	for (size_t i = 0; i < n; i++) {
		char *p = fl_path_join(dir, files[i]);
		uint8_t h[32], zero[32] = {0};
		uint64_t size;
		assert_int_equal(fl_sha256_file(p, h, &size), 0);
		assert_int_equal(ota_manifest_add_file(m, files[i], size, h, zero), 0);
		free(p);
	}
	return m;
}

static void put(const char *dir, const char *name, const char *text)
{
	char *p = fl_path_join(dir, name);
	assert_int_equal(fl_write_file_atomic(p, text, strlen(text), 0644), 0);
	free(p);
}

static void test_open_switch_clear(void **state)
{
	(void)state;
	char *models = fl_test_mkdtemp("slots");
	struct ota_slots *s = NULL;
	assert_int_equal(ota_slots_open(models, "../evil", &s), -EINVAL);
	assert_int_equal(ota_slots_open(models, "tiny", &s), 0);
	assert_int_equal(ota_slots_current(s), 0);
	assert_int_equal(ota_slots_inactive(s), 'a');
	assert_non_null(strstr(ota_slots_dir(s, 'a'), "/tiny/a"));
	assert_non_null(strstr(ota_slots_dir(s, 'b'), "/tiny/b"));
	assert_null(ota_slots_dir(s, 'c'));
	assert_non_null(strstr(ota_slots_link(s), "/tiny/current"));

	put(ota_slots_dir(s, 'a'), "model.gguf", "A");
	assert_int_equal(ota_slots_switch(s, 'a'), 0);
	assert_int_equal(ota_slots_current(s), 'a');
	assert_int_equal(ota_slots_inactive(s), 'b');
	assert_int_equal(ota_slots_switch(s, 'a'), 0); /* idempotent */
	assert_int_equal(ota_slots_switch(s, 'x'), -EINVAL);
	/* The active slot is never cleared. */
	assert_int_equal(ota_slots_clear(s, 'a'), -FL_ESTATE);
	char *f = fl_path_join(ota_slots_dir(s, 'a'), "model.gguf");
	assert_int_equal(access(f, F_OK), 0);
	free(f);
	put(ota_slots_dir(s, 'b'), "junk", "x");
	assert_int_equal(ota_slots_clear(s, 'b'), 0);
	assert_int_equal(fl_test_count_files(ota_slots_dir(s, 'b')), 0);
	assert_int_equal(ota_slots_clear(s, 'q'), -EINVAL);
	ota_slots_free(s);

	/* Reopen sees the link; a bad link is a format error. */
	assert_int_equal(ota_slots_open(models, "tiny", &s), 0);
	assert_int_equal(ota_slots_current(s), 'a');
	char *link = strdup(ota_slots_link(s));
	ota_slots_free(s);
	unlink(link);
	assert_int_equal(symlink("/etc", link), 0);
	assert_int_equal(ota_slots_open(models, "tiny", &s), -FL_EFORMAT);
	unlink(link);
	assert_int_equal(mkdir(link, 0755), 0);
	assert_int_equal(ota_slots_open(models, "tiny", &s), -FL_EFORMAT);
	rmdir(link);
	free(link);
	ota_slots_free(NULL);
	fl_rm_rf(models);
	free(models);
}

static void test_switch_power_cut(void **state)
{
	(void)state;
	char *models = fl_test_mkdtemp("slotcut");
	struct ota_slots *s = NULL;
	assert_int_equal(ota_slots_open(models, "m", &s), 0);
	assert_int_equal(ota_slots_switch(s, 'a'), 0);
	static const char *const points[] = {"slot.switch.before", "fs.symlink.before_rename",
					     "fs.symlink.after_rename", "slot.switch.after"};
	static const char expect[] = {'a', 'a', 'b', 'b'};
	for (size_t i = 0; i < FL_ARRAY_SIZE(points); i++) {
		assert_int_equal(ota_slots_switch(s, 'a'), 0);
		pid_t pid = fork();
		if (pid == 0) {
			char spec[128];
			snprintf(spec, sizeof(spec), "%s=exit", points[i]);
			setenv("FLOTILLA_FAILPOINTS", spec, 1);
			fl_failpoint_reload();
			ota_slots_switch(s, 'b');
			_exit(0);
		}
		int st;
		waitpid(pid, &st, 0);
		assert_int_equal(WEXITSTATUS(st), FL_FAILPOINT_EXIT_CODE);
		/* Either the old or the new slot, never a missing or broken link. */
		assert_int_equal(ota_slots_current(s), expect[i]);
	}
	ota_slots_free(s);
	fl_rm_rf(models);
	free(models);
}

static void test_verify(void **state)
{
	(void)state;
	char *dir = fl_test_mkdtemp("slotverify");
	put(dir, "model.gguf", "weights");
	char *sub = fl_path_join(dir, "tok");
	assert_int_equal(fl_mkdir_p(sub, 0755), 0);
	put(sub, "vocab.json", "{}");
	static const char *const files[] = {"model.gguf", "tok/vocab.json"};
	struct ota_manifest *m = manifest_for(dir, files, 2);
	const char *bad = NULL;
	assert_int_equal(ota_slot_verify(dir, m, &bad), 0);

	put(dir, "model.gguf", "weightz"); /* same size, other bytes */
	assert_int_equal(ota_slot_verify(dir, m, &bad), -FL_EHASH);
	assert_string_equal(bad, "model.gguf");
	put(dir, "model.gguf", "weights!");
	assert_int_equal(ota_slot_verify(dir, m, &bad), -FL_ESIZE);
	put(dir, "model.gguf", "weights");
	put(dir, "extra", "x");
	assert_int_equal(ota_slot_verify(dir, m, &bad), -FL_EPATH);
	char *extra = fl_path_join(dir, "extra");
	unlink(extra);
	assert_int_equal(symlink("model.gguf", extra), 0);
	assert_int_equal(ota_slot_verify(dir, m, &bad), -FL_EPATH);
	assert_string_equal(bad, "extra");
	unlink(extra);
	free(extra);
	char *voc = fl_path_join(sub, "vocab.json");
	unlink(voc);
	assert_int_equal(ota_slot_verify(dir, m, &bad), -FL_EMISSING);
	assert_string_equal(bad, "tok/vocab.json");
	free(voc);
	ota_manifest_free(m);
	free(sub);
	fl_rm_rf(dir);
	free(dir);
}

static void test_compat(void **state)
{
	(void)state;
	struct ota_device_info dev;
	char arch[64];
	assert_int_equal(ota_device_info_probe(&dev, arch, sizeof(arch)), 0);
	assert_true(strlen(dev.arch) > 0);
	assert_true(dev.ram_mb > 0);
	static const char *const backends[] = {"gguf", NULL};
	static const char *const accels[] = {"cuda", NULL};
	dev.arch = "aarch64";
	dev.ram_mb = 2048;
	dev.backends = backends;
	dev.accelerators = NULL;

	struct ota_manifest *m = NULL;
	assert_int_equal(ota_manifest_new("tiny", "1", 1, 1000, 2000, &m), 0);
	char why[256];
	assert_int_equal(ota_compat_check(m, &dev, why, sizeof(why)), 0); /* any arch, gguf */
	m->compat.arch = calloc(2, sizeof(char *));
	m->compat.arch[0] = strdup("arm64"); /* Debian name of aarch64 */
	m->compat.n_arch = 1;
	assert_int_equal(ota_compat_check(m, &dev, why, sizeof(why)), 0);
	dev.arch = "x86_64";
	assert_int_equal(ota_compat_check(m, &dev, why, sizeof(why)), -FL_EINCOMPAT);
	assert_non_null(strstr(why, "x86_64"));
	dev.arch = "aarch64";
	m->compat.min_ram_mb = 4096;
	assert_int_equal(ota_compat_check(m, &dev, why, sizeof(why)), -FL_EINCOMPAT);
	assert_string_equal(why, "needs 4096 MiB RAM, device has 2048 MiB");
	m->compat.min_ram_mb = 0;
	free(m->compat.accelerator);
	m->compat.accelerator = strdup("cuda");
	assert_int_equal(ota_compat_check(m, &dev, why, sizeof(why)), -FL_EINCOMPAT);
	dev.accelerators = accels;
	assert_int_equal(ota_compat_check(m, &dev, why, sizeof(why)), 0);
	free(m->compat.backend);
	m->compat.backend = strdup("xgboost");
	assert_int_equal(ota_compat_check(m, &dev, why, sizeof(why)), -FL_EINCOMPAT);
	assert_non_null(strstr(why, "xgboost"));
	ota_manifest_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_switch_clear),
		cmocka_unit_test(test_switch_power_cut),
		cmocka_unit_test(test_verify),
		cmocka_unit_test(test_compat),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
