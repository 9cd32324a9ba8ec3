/* The config-file reader used by every program.
 *
 * Format (INI-like, one setting per line):
 *   # comment            ; comment
 *   [section]
 *   key = value          (value runs to end of line, surrounding blanks trimmed;
 *                         "double quotes" keep blanks; no escapes)
 * Keys are addressed as "section.key" (keys before any section: "key").
 * Limits: 1 MiB file, 4 KiB line, 1024 settings. A duplicate key, a line that is
 * neither, or an unknown key (fl_config_check_keys) is -FL_ECONFIG with the
 * line number in fl_config_error(). */
#ifndef FLOTILLA_CONFIG_H
#define FLOTILLA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fl_config;

/* Load PATH. Caller frees *ret with fl_config_free(). On a syntax error
 * returns -FL_ECONFIG and, if RET_ERR is not NULL, a message in it. */
int fl_config_load(const char *path, struct fl_config **ret, char *ret_err, size_t err_len);
int fl_config_parse(const char *text, size_t len, struct fl_config **ret, char *ret_err,
		    size_t err_len);
void fl_config_free(struct fl_config *cfg);

/* Value of KEY or DEF when absent; the string belongs to CFG. */
const char *fl_config_get_str(const struct fl_config *cfg, const char *key, const char *def);
/* Integer with optional unit suffix (k, M, G: powers of 1024; s, m, h for
 * durations are not applied here). Absent: *ret = DEF. Bad or out of range:
 * -FL_ECONFIG. */
int fl_config_get_int(const struct fl_config *cfg, const char *key, int64_t min, int64_t max,
		      int64_t def, int64_t *ret);
/* true/false/yes/no/on/off/1/0. */
int fl_config_get_bool(const struct fl_config *cfg, const char *key, bool def, bool *ret);
/* Every key must be in ALLOWED (NULL-terminated); first unknown in RET_BAD. */
int fl_config_check_keys(const struct fl_config *cfg, const char *const *allowed,
			 const char **ret_bad);
/* Number of settings. */
size_t fl_config_count(const struct fl_config *cfg);

#endif
