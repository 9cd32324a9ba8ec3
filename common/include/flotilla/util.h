/* Small helpers: time, bounded strings, number parsing. */
#ifndef FLOTILLA_UTIL_H
#define FLOTILLA_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Wall clock, seconds since the epoch (can jump). */
int64_t fl_now_s(void);
/* Monotonic clock in milliseconds / nanoseconds (never jumps). */
int64_t fl_mono_ms(void);
int64_t fl_mono_ns(void);

/* Copy at most SIZE-1 bytes and always terminate; returns strlen(src), so
 * truncation is (ret >= size). */
size_t fl_strlcpy(char *dst, const char *src, size_t size);
/* snprintf that returns -FL_ETOOBIG on truncation and -EINVAL on error,
 * else the length written. */
int fl_snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Allocating printf; NULL on out of memory. Caller frees. */
char *fl_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Strict decimal parse of the whole string into [MIN, MAX]: no sign games, no
 * trailing garbage, no overflow. -EINVAL / -ERANGE. */
int fl_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret);

/* ISO 8601 UTC "2026-11-25T10:00:00Z" <-> epoch seconds. */
int fl_time_parse(const char *s, int64_t *ret);
/* OUT must hold at least 21 bytes. */
void fl_time_format(int64_t t, char out[21]);

/* A growable byte buffer, always NUL-terminated after LEN bytes (when P is
 * not NULL). Start with {0}; release with fl_buf_free(). */
struct fl_buf {
	char *p;
	size_t len, cap;
};
/* Append N bytes (may be 0); -ENOMEM leaves B unchanged. */
int fl_buf_append(struct fl_buf *b, const void *data, size_t n);
void fl_buf_free(struct fl_buf *b);

/* True when S is a safe identifier: 1..MAX_LEN of [A-Za-z0-9._-], not starting
 * with '.' or '-'. Model names, device ids and file names use it. */
bool fl_name_valid(const char *s, size_t max_len);

#endif
