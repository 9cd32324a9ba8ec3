/* Logging to stderr. Under systemd (JOURNAL_STREAM set and matching stderr)
 * each line carries an sd-daemon "<N>" priority prefix and no timestamp, so the
 * journal records the level; otherwise lines read
 * "2026-11-25T10:00:00.123Z flotilla-agent[123] warn: text".
 * Thread-safe (one write(2) per line). */
#ifndef FLOTILLA_LOG_H
#define FLOTILLA_LOG_H

enum fl_log_level { FL_LOG_ERR = 3, FL_LOG_WARN = 4, FL_LOG_INFO = 6, FL_LOG_DEBUG = 7 };

/* Set the program name shown in each line and detect journald. */
void fl_log_init(const char *ident);
void fl_log_set_level(enum fl_log_level level);
enum fl_log_level fl_log_get_level(void);
/* Parse "error|warn|info|debug"; returns 0 or -EINVAL. */
int fl_log_parse_level(const char *s, enum fl_log_level *ret_level);

void fl_log(enum fl_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define fl_err(...) fl_log(FL_LOG_ERR, __VA_ARGS__)
#define fl_warn(...) fl_log(FL_LOG_WARN, __VA_ARGS__)
#define fl_info(...) fl_log(FL_LOG_INFO, __VA_ARGS__)
#define fl_debug(...) fl_log(FL_LOG_DEBUG, __VA_ARGS__)

#endif
