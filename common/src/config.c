#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flotilla/cleanup.h>
#include <flotilla/config.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/util.h>

#define CFG_MAX_FILE_BYTES (1u << 20)
#define CFG_MAX_LINE_BYTES 4096
#define CFG_MAX_ENTRIES 1024
#define CFG_MAX_KEY_BYTES 128

struct cfg_entry {
	char *key; /* "section.key" */
	char *value;
};

struct fl_config {
	struct cfg_entry *entries;
	size_t n;
};

void fl_config_free(struct fl_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->n; i++) {
		free(cfg->entries[i].key);
		free(cfg->entries[i].value);
	}
	free(cfg->entries);
	free(cfg);
}

FL_DEFINE_CLEANUP(struct fl_config, fl_config_free)

static char *trim(char *s, char *end)
{
	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		end--;
	*end = '\0';
	return s;
}

static bool key_chars_ok(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

static const struct cfg_entry *find(const struct fl_config *cfg, const char *key)
{
	for (size_t i = 0; i < cfg->n; i++)
		if (!strcmp(cfg->entries[i].key, key))
			return &cfg->entries[i];
	return NULL;
}

#define FAIL(fmt, ...) \
	do { \
		if (ret_err) \
			snprintf(ret_err, err_len, fmt, __VA_ARGS__); \
		return -FL_ECONFIG; \
	} while (0)

int fl_config_parse(const char *text, size_t len, struct fl_config **ret, char *ret_err,
		    size_t err_len)
{
	if (len > CFG_MAX_FILE_BYTES)
		FAIL("config larger than %u bytes", CFG_MAX_FILE_BYTES);
	_cleanup_(fl_config_freep) struct fl_config *cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return -ENOMEM;
	char section[CFG_MAX_KEY_BYTES] = "";
	char line[CFG_MAX_LINE_BYTES + 1];
	size_t pos = 0;
	for (unsigned lineno = 1; pos < len; lineno++) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
		if (ll > CFG_MAX_LINE_BYTES)
			FAIL("line %u: longer than %d bytes", lineno, CFG_MAX_LINE_BYTES);
		if (memchr(text + pos, '\0', ll))
			FAIL("line %u: NUL byte", lineno);
		memcpy(line, text + pos, ll);
		line[ll] = '\0';
		pos += ll + (nl ? 1 : 0);

		char *s = trim(line, line + ll);
		if (!*s || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			char *close = strchr(s, ']');
			if (!close || close[1] != '\0')
				FAIL("line %u: bad section header", lineno);
			char *name = trim(s + 1, close);
			if (!key_chars_ok(name) || strlen(name) >= sizeof(section) / 2)
				FAIL("line %u: bad section name", lineno);
			fl_strlcpy(section, name, sizeof(section));
			continue;
		}
		char *eq = strchr(s, '=');
		if (!eq)
			FAIL("line %u: expected 'key = value'", lineno);
		char *key = trim(s, eq);
		char *val = trim(eq + 1, eq + 1 + strlen(eq + 1));
		if (!key_chars_ok(key) || strlen(key) >= CFG_MAX_KEY_BYTES / 2)
			FAIL("line %u: bad key", lineno);
		size_t vl = strlen(val);
		if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
			val[vl - 1] = '\0';
			val++;
		} else if (vl && (val[0] == '"' || val[vl - 1] == '"')) {
			FAIL("line %u: unbalanced quote", lineno);
		}
		char full[CFG_MAX_KEY_BYTES + 2];
		if (section[0])
			snprintf(full, sizeof(full), "%s.%s", section, key);
		else
			fl_strlcpy(full, key, sizeof(full));
		if (find(cfg, full))
			FAIL("line %u: duplicate key '%s'", lineno, full);
		if (cfg->n >= CFG_MAX_ENTRIES)
			FAIL("line %u: more than %d settings", lineno, CFG_MAX_ENTRIES);
		struct cfg_entry *ne = realloc(cfg->entries, (cfg->n + 1) * sizeof(*ne));
		if (!ne)
			return -ENOMEM;
		cfg->entries = ne;
		ne[cfg->n].key = strdup(full);
		ne[cfg->n].value = strdup(val);
		cfg->n++;
		if (!ne[cfg->n - 1].key || !ne[cfg->n - 1].value)
			return -ENOMEM;
	}
	*ret = fl_steal_ptr(cfg);
	return 0;
}

int fl_config_load(const char *path, struct fl_config **ret, char *ret_err, size_t err_len)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = fl_read_file(path, CFG_MAX_FILE_BYTES, &text, &len);
	if (r < 0) {
		if (ret_err)
			snprintf(ret_err, err_len, "%s: %s", path, fl_strerror(r));
		return r;
	}
	r = fl_config_parse(text, len, ret, ret_err, err_len);
	if (r < 0 && ret_err) {
		char tmp[256];
		fl_strlcpy(tmp, ret_err, sizeof(tmp));
		snprintf(ret_err, err_len, "%s: %s", path, tmp);
	}
	return r;
}

const char *fl_config_get_str(const struct fl_config *cfg, const char *key, const char *def)
{
	const struct cfg_entry *e = cfg ? find(cfg, key) : NULL;
	return e ? e->value : def;
}

int fl_config_get_int(const struct fl_config *cfg, const char *key, int64_t min, int64_t max,
		      int64_t def, int64_t *ret)
{
	const char *v = fl_config_get_str(cfg, key, NULL);
	if (!v) {
		*ret = def;
		return 0;
	}
	char num[32];
	size_t n = fl_strlcpy(num, v, sizeof(num));
	if (n == 0 || n >= sizeof(num))
		return -FL_ECONFIG;
	int64_t mult = 1;
	switch (num[n - 1]) {
	case 'k': case 'K': mult = 1024; break;
	case 'M': mult = 1024 * 1024; break;
	case 'G': mult = 1024 * 1024 * 1024; break;
	default: break;
	}
	if (mult != 1)
		num[n - 1] = '\0';
	int64_t x;
	if (fl_parse_i64(num, INT64_MIN / mult, INT64_MAX / mult, &x) < 0)
		return -FL_ECONFIG;
	x *= mult;
	if (x < min || x > max)
		return -FL_ECONFIG;
	*ret = x;
	return 0;
}

int fl_config_get_bool(const struct fl_config *cfg, const char *key, bool def, bool *ret)
{
	const char *v = fl_config_get_str(cfg, key, NULL);
	if (!v) {
		*ret = def;
		return 0;
	}
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};
	for (size_t i = 0; i < FL_ARRAY_SIZE(yes); i++) {
		if (!strcmp(v, yes[i])) {
			*ret = true;
			return 0;
		}
		if (!strcmp(v, no[i])) {
			*ret = false;
			return 0;
		}
	}
	return -FL_ECONFIG;
}

int fl_config_check_keys(const struct fl_config *cfg, const char *const *allowed,
			 const char **ret_bad)
{
	for (size_t i = 0; i < cfg->n; i++) {
		bool ok = false;
		for (const char *const *a = allowed; *a; a++)
			if (!strcmp(*a, cfg->entries[i].key)) {
				ok = true;
				break;
			}
		if (!ok) {
			if (ret_bad)
				*ret_bad = cfg->entries[i].key;
			return -FL_ECONFIG;
		}
	}
	return 0;
}

size_t fl_config_count(const struct fl_config *cfg) { return cfg ? cfg->n : 0; }
