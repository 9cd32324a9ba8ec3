#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <flotilla/log.h>
#include <flotilla/util.h>

static char log_ident[64] = "flotilla";
static enum fl_log_level log_level = FL_LOG_INFO;
static int log_journal = -1; /* -1 unknown, 0 plain, 1 journald */

/* systemd sets JOURNAL_STREAM=dev:ino for the stream it connected to stderr. */
static int detect_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	struct stat st;
	if (!js || fstat(STDERR_FILENO, &st) < 0)
		return 0;
	unsigned long long dev, ino;
	if (sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return 0;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void fl_log_init(const char *ident)
{
	if (ident)
		fl_strlcpy(log_ident, ident, sizeof(log_ident));
	log_journal = detect_journal();
	const char *lvl = getenv("FLOTILLA_LOG_LEVEL");
	enum fl_log_level l;
	if (lvl && fl_log_parse_level(lvl, &l) == 0)
		log_level = l;
}

void fl_log_set_level(enum fl_log_level level) { log_level = level; }
enum fl_log_level fl_log_get_level(void) { return log_level; }

int fl_log_parse_level(const char *s, enum fl_log_level *ret_level)
{
	static const struct { const char *name; enum fl_log_level level; } names[] = {
		{"error", FL_LOG_ERR}, {"err", FL_LOG_ERR}, {"warn", FL_LOG_WARN},
		{"warning", FL_LOG_WARN}, {"info", FL_LOG_INFO}, {"debug", FL_LOG_DEBUG},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(s, names[i].name)) {
			*ret_level = names[i].level;
			return 0;
		}
	return -EINVAL;
}

static const char *level_name(enum fl_log_level l)
{
	switch (l) {
	case FL_LOG_ERR: return "error";
	case FL_LOG_WARN: return "warn";
	case FL_LOG_INFO: return "info";
	default: return "debug";
	}
}

void fl_log(enum fl_log_level level, const char *fmt, ...)
{
	if (level > log_level)
		return;
	int saved = errno;
	if (log_journal < 0)
		log_journal = detect_journal();
	char line[2048];
	size_t n = 0;
	int w;
	if (log_journal) {
		w = snprintf(line, sizeof(line), "<%d>", (int)level);
	} else {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		w = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ",
			     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, ts.tv_nsec / 1000000, log_ident, (int)getpid(),
			     level_name(level));
	}
	if (w > 0)
		n = (size_t)w < sizeof(line) ? (size_t)w : sizeof(line) - 1;
	va_list ap;
	va_start(ap, fmt);
	w = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	if (w > 0)
		n += (size_t)w < sizeof(line) - n ? (size_t)w : sizeof(line) - n - 1;
	/* One line per record: a message may not forge a second log line. */
	for (size_t i = 0; i < n; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t r = write(STDERR_FILENO, line, n);
	(void)r;
	errno = saved;
}
