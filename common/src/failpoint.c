#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <flotilla/error.h>
#include <flotilla/failpoint.h>
#include <flotilla/util.h>

#define FP_MAX 64
#define FP_NAME_MAX 96

enum fp_action { FP_EXIT, FP_KILL, FP_FAIL };

struct fp {
	char name[FP_NAME_MAX];
	enum fp_action action;
	unsigned long nth; /* 0: every time */
	atomic_ulong hits;
};

static struct fp fps[FP_MAX];
static size_t n_fps;
static int trace_fd = -1;
static bool armed;
static pthread_mutex_t fp_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int loaded;

static void parse_one(const char *spec, size_t len)
{
	const char *eq = memchr(spec, '=', len);
	if (!eq || eq == spec || n_fps >= FP_MAX || (size_t)(eq - spec) >= FP_NAME_MAX)
		return;
	struct fp *f = &fps[n_fps];
	memcpy(f->name, spec, (size_t)(eq - spec));
	f->name[eq - spec] = '\0';
	const char *act = eq + 1;
	size_t act_len = len - (size_t)(act - spec);
	f->nth = 0;
	const char *star = memchr(act, '*', act_len);
	if (star) {
		char num[24];
		size_t nl = (size_t)(star - act);
		if (nl == 0 || nl >= sizeof(num))
			return;
		memcpy(num, act, nl);
		num[nl] = '\0';
		int64_t v;
		if (fl_parse_i64(num, 1, INT32_MAX, &v) < 0)
			return;
		f->nth = (unsigned long)v;
		act_len -= nl + 1;
		act = star + 1;
	}
	if (act_len == 4 && !memcmp(act, "exit", 4))
		f->action = FP_EXIT;
	else if (act_len == 4 && !memcmp(act, "kill", 4))
		f->action = FP_KILL;
	else if (act_len == 4 && !memcmp(act, "fail", 4))
		f->action = FP_FAIL;
	else
		return;
	atomic_store(&f->hits, 0);
	n_fps++;
}

static void load_locked(void)
{
	n_fps = 0;
	if (trace_fd >= 0) {
		close(trace_fd);
		trace_fd = -1;
	}
	const char *spec = getenv("FLOTILLA_FAILPOINTS");
	if (spec) {
		const char *p = spec;
		while (*p) {
			const char *end = strchr(p, ',');
			size_t len = end ? (size_t)(end - p) : strlen(p);
			if (len)
				parse_one(p, len);
			p += len;
			if (*p == ',')
				p++;
		}
	}
	const char *trace = getenv("FLOTILLA_FAILPOINT_TRACE");
	if (trace && *trace)
		trace_fd = open(trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	armed = n_fps > 0 || trace_fd >= 0;
	atomic_store(&loaded, 1);
}

void fl_failpoint_reload(void)
{
	pthread_mutex_lock(&fp_lock);
	load_locked();
	pthread_mutex_unlock(&fp_lock);
}

int fl_failpoint_hit(const char *name)
{
	if (!atomic_load(&loaded))
		fl_failpoint_reload();
	if (!armed)
		return 0;
	if (trace_fd >= 0) {
		char line[FP_NAME_MAX + 1];
		size_t n = fl_strlcpy(line, name, sizeof(line) - 1);
		if (n > sizeof(line) - 2)
			n = sizeof(line) - 2;
		line[n++] = '\n';
		ssize_t w = write(trace_fd, line, n);
		(void)w;
	}
	for (size_t i = 0; i < n_fps; i++) {
		struct fp *f = &fps[i];
		if (strcmp(f->name, name) != 0)
			continue;
		unsigned long hit = atomic_fetch_add(&f->hits, 1) + 1;
		if (f->nth && hit != f->nth)
			continue;
		switch (f->action) {
		case FP_EXIT:
			_exit(FL_FAILPOINT_EXIT_CODE);
		case FP_KILL:
			raise(SIGKILL);
			_exit(FL_FAILPOINT_EXIT_CODE);
		case FP_FAIL:
			return -FL_EFAILPOINT;
		}
	}
	return 0;
}
