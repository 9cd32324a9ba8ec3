/* The exec backend's checks at every start of its program (serve.exec_allow,
 * the real path, permissions) and its supervision: a program that dies while
 * starting is a crash (restart with backoff, crash loop), a refused one a
 * load failure that runs nothing. docs/serving.md "exec backend". */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "flotilla/backend.h"
#include "flotilla/error.h"
#include "flotilla/fs.h"
#include "flotilla/runner.h"
#include "testutil.h"

/* backend_exec.c */
int rt_exec_program_check(const char *prog, char *real, size_t real_size);

static char g_dir[512], g_exe[512];

static void path(char *buf, size_t size, const char *name)
{
	snprintf(buf, size, "%s/%s", g_dir, name);
}

/* A shell script NAME in g_dir that appends a line to g_dir/ran and exits 1. */
static void write_script(const char *name, mode_t mode)
{
	char p[600], text[1200];
	path(p, sizeof(p), name);
	snprintf(text, sizeof(text), "#!/bin/sh\necho \"$0\" >>%s/ran\necho dying >&2\nexit 1\n",
		 g_dir);
	assert_int_equal(fl_test_write(p, text, strlen(text)), 0);
	assert_int_equal(chmod(p, mode), 0);
}

static int lines_ran(void)
{
	char p[600];
	path(p, sizeof(p), "ran");
	FILE *f = fopen(p, "r");
	if (!f)
		return 0;
	int n = 0, c;
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

static int setup(void **state)
{
	(void)state;
	const char *bin = getenv("FL_BINARY_DIR");
	char *d = fl_test_mkdtemp("backend_exec");
	if (!d || !bin)
		return -1;
	snprintf(g_dir, sizeof(g_dir), "%s", d);
	free(d);
	chmod(g_dir, 0755);
	snprintf(g_exe, sizeof(g_exe), "%s/runtime/tools/rt-runner", bin);
	/* the test tree's directories must pass the checks themselves */
	return access(g_exe, X_OK);
}

static int teardown(void **state)
{
	(void)state;
	unsetenv("FLOTILLA_EXEC_ALLOW");
	fl_rm_rf(g_dir);
	return 0;
}

static void test_program_check(void **state)
{
	(void)state;
	char prog[600], link[600], sub[600], other[600], real[4096], allow[2400];
	write_script("prog", 0755);
	path(prog, sizeof(prog), "prog");
	path(link, sizeof(link), "link");
	assert_int_equal(symlink(prog, link), 0);

	/* no list (the runtime on its own): only the path and permissions */
	unsetenv("FLOTILLA_EXEC_ALLOW");
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), 0);
	assert_string_equal(real, prog);
	assert_int_equal(rt_exec_program_check("bin/prog", real, sizeof(real)), -FL_ECONFIG);

	/* listed exactly */
	setenv("FLOTILLA_EXEC_ALLOW", prog, 1);
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), 0);
	path(other, sizeof(other), "missing");
	assert_int_equal(rt_exec_program_check(other, real, sizeof(real)), -FL_EINCOMPAT);
	setenv("FLOTILLA_EXEC_ALLOW", "", 1); /* empty list: exec disabled */
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), -FL_EINCOMPAT);

	/* a link: allowed only when its real path is listed too */
	setenv("FLOTILLA_EXEC_ALLOW", link, 1);
	assert_int_equal(rt_exec_program_check(link, real, sizeof(real)), -FL_EINCOMPAT);
	snprintf(allow, sizeof(allow), "%s , %s", link, prog);
	setenv("FLOTILLA_EXEC_ALLOW", allow, 1);
	assert_int_equal(rt_exec_program_check(link, real, sizeof(real)), 0);
	assert_string_equal(real, prog); /* what is executed: the checked file */
	/* the link swapped to another program: refused */
	write_script("other", 0755);
	path(other, sizeof(other), "other");
	assert_int_equal(unlink(link), 0);
	assert_int_equal(symlink(other, link), 0);
	assert_int_equal(rt_exec_program_check(link, real, sizeof(real)), -FL_EINCOMPAT);
	/* the listed program replaced by a link to a path not listed: refused */
	char moved[600];
	path(moved, sizeof(moved), "prog.orig");
	assert_int_equal(rename(prog, moved), 0);
	assert_int_equal(symlink(other, prog), 0);
	setenv("FLOTILLA_EXEC_ALLOW", prog, 1);
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), -FL_EINCOMPAT);
	assert_int_equal(unlink(prog), 0);
	assert_int_equal(rename(moved, prog), 0);
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), 0);

	/* permissions of the file */
	assert_int_equal(chmod(prog, 0757), 0);
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), -EACCES);
	assert_int_equal(chmod(prog, 0644), 0); /* not executable (for root either) */
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), -EACCES);
	assert_int_equal(chmod(prog, 0755), 0);
	assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), 0);
	if (geteuid() == 0) { /* owned by another user */
		assert_int_equal(chown(prog, 65534, 65534), 0);
		assert_int_equal(rt_exec_program_check(prog, real, sizeof(real)), -EACCES);
		assert_int_equal(chown(prog, 0, 0), 0);
	}

	/* permissions of its directories */
	snprintf(sub, sizeof(sub), "%s/sub", g_dir);
	assert_int_equal(mkdir(sub, 0755), 0);
	char sprog[700];
	snprintf(sprog, sizeof(sprog), "%s/prog", sub);
	assert_int_equal(rename(prog, sprog), 0);
	setenv("FLOTILLA_EXEC_ALLOW", sprog, 1);
	assert_int_equal(rt_exec_program_check(sprog, real, sizeof(real)), 0);
	assert_int_equal(chmod(sub, 0777), 0); /* anyone could swap the program */
	assert_int_equal(rt_exec_program_check(sprog, real, sizeof(real)), -EACCES);
	assert_int_equal(chmod(sub, 01777), 0); /* sticky, as /tmp: fine */
	assert_int_equal(rt_exec_program_check(sprog, real, sizeof(real)), 0);
	assert_int_equal(chmod(sub, 0755), 0);
	assert_int_equal(rename(sprog, prog), 0);
	assert_int_equal(rmdir(sub), 0);
	assert_int_equal(lines_ran(), 0); /* checks execute nothing */
}

static void runner_cfg(struct rt_runner_config *c, const char *prog, char *cfg, size_t cfg_size)
{
	memset(c, 0, sizeof(*c));
	snprintf(cfg, cfg_size, "{\"command\":[\"%s\",\"--port\",\"{port}\"],\"ready_timeout_ms\":5000}",
		 prog);
	c->exe = g_exe;
	c->backend = "exec";
	c->model_path = g_dir;
	c->backend_config = cfg;
	rt_runner_limits_default(&c->limits);
	c->limits.crash_loop_n = 3;
	c->limits.crash_loop_window_ms = 20000;
	c->limits.backoff_min_ms = 5;
}

/* A program that exits while starting: each runner start is a crash,
 * restarted with backoff until the crash loop. */
static void test_dies_at_start_crash_loop(void **state)
{
	(void)state;
	char prog[600], cfg[1200];
	write_script("dies", 0755);
	path(prog, sizeof(prog), "dies");
	setenv("FLOTILLA_EXEC_ALLOW", prog, 1); /* inherited by the runners */
	char ranp[600];
	path(ranp, sizeof(ranp), "ran");
	unlink(ranp);
	struct rt_runner_config c;
	runner_cfg(&c, prog, cfg, sizeof(cfg));
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), -FL_ECRASH);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_int_equal(st.state, RT_RUNNER_CRASH_LOOP);
	assert_int_equal(st.n_starts, 3);
	assert_int_equal(st.n_crashes, 3);
	assert_int_equal(st.last_error, -FL_ECRASH);
	assert_int_equal(st.backoff_ms, 10); /* 5, then doubled */
	assert_true(st.crash_loop_ms >= 15);
	assert_int_equal(lines_ran(), 3); /* started once per runner start */
	char tail[RT_RUNNER_STDERR_BYTES];
	rt_runner_stderr_tail(r, tail, sizeof(tail));
	assert_non_null(strstr(tail, "exited while starting"));
	struct rt_gen_request q;
	rt_gen_request_default(&q);
	q.prompt = "x";
	struct rt_gen_result res;
	assert_int_equal(rt_runner_generate(r, &q, &res), -FL_ESTATE);
	rt_runner_stop(r, 100);
}

/* A refused program: the model does not load, nothing runs, no restart. */
static void test_refused_is_load_failed(void **state)
{
	(void)state;
	char prog[600], link[600], cfg[1200];
	write_script("target", 0755);
	path(prog, sizeof(prog), "target");
	path(link, sizeof(link), "via");
	unlink(link);
	assert_int_equal(symlink(prog, link), 0);
	setenv("FLOTILLA_EXEC_ALLOW", link, 1); /* the link, not its target */
	char ranp[600];
	path(ranp, sizeof(ranp), "ran");
	unlink(ranp);
	struct rt_runner_config c;
	runner_cfg(&c, link, cfg, sizeof(cfg));
	struct rt_runner *r = NULL;
	assert_int_equal(rt_runner_start(&c, &r), 0);
	assert_int_equal(rt_runner_wait_ready(r, 20000), -FL_EINCOMPAT);
	struct rt_runner_status st;
	rt_runner_get_status(r, &st);
	assert_int_equal(st.state, RT_RUNNER_LOAD_FAILED);
	assert_int_equal(st.n_starts, 1);
	assert_int_equal(st.n_crashes, 0);
	assert_int_equal(lines_ran(), 0);
	char tail[RT_RUNNER_STDERR_BYTES];
	rt_runner_stderr_tail(r, tail, sizeof(tail));
	assert_non_null(strstr(tail, "which is not in the agent's serve.exec_allow: not started"));
	rt_runner_stop(r, 100);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_program_check),
		cmocka_unit_test(test_dies_at_start_crash_loop),
		cmocka_unit_test(test_refused_is_load_failed),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
