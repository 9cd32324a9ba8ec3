/* cJSON wrapper with limits. Every JSON document that crosses a trust boundary
 * (manifests, keyrings, MQTT payloads, HTTP bodies, config) is parsed through
 * fl_json_parse(), which refuses documents larger than max_bytes or nested
 * deeper than max_depth before cJSON sees them, and refuses trailing garbage.
 *
 * The getters check type and range; they return -FL_ESCHEMA when the member is
 * missing or of the wrong type and -FL_ERANGE when a number is outside the
 * range or not an integer. Returned strings point into the cJSON tree. */
#ifndef FLOTILLA_JSON_H
#define FLOTILLA_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FL_JSON_DEFAULT_DEPTH 16

/* Parse LEN bytes (need not be NUL-terminated). Caller frees *ret with cJSON_Delete(). */
int fl_json_parse(const char *buf, size_t len, size_t max_bytes, int max_depth, cJSON **ret);

int fl_json_get_str(const cJSON *obj, const char *key, const char **ret);
/* Like fl_json_get_str but a missing member gives *ret = DEF and 0. */
int fl_json_get_str_opt(const cJSON *obj, const char *key, const char *def, const char **ret);
/* Integers are accepted only when exactly representable (|v| < 2^53). */
int fl_json_get_int(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t *ret);
int fl_json_get_int_opt(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t def,
			int64_t *ret);
int fl_json_get_double(const cJSON *obj, const char *key, double min, double max, double *ret);
int fl_json_get_double_opt(const cJSON *obj, const char *key, double min, double max, double def,
			   double *ret);
int fl_json_get_bool(const cJSON *obj, const char *key, bool *ret);
int fl_json_get_bool_opt(const cJSON *obj, const char *key, bool def, bool *ret);
/* Object/array members; *ret points into OBJ. */
int fl_json_get_obj(const cJSON *obj, const char *key, const cJSON **ret);
int fl_json_get_arr(const cJSON *obj, const char *key, const cJSON **ret);

/* Refuse members of OBJ not named in ALLOWED (NULL-terminated): -FL_ESCHEMA,
 * and *ret_bad (if not NULL) names the first unknown member. */
int fl_json_check_keys(const cJSON *obj, const char *const *allowed, const char **ret_bad);

/* Serialize compactly; caller frees with free(). NULL on out of memory. */
char *fl_json_print(const cJSON *obj);

#endif
