/* Helpers for the controller unit tests (header-only). */
#ifndef FLOTILLA_CTL_TESTUTIL_H
#define FLOTILLA_CTL_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <unistd.h>

#include <flotilla/fs.h>
#include <flotilla/util.h>

#include "ctl.h"
#include "testutil.h"

#define CTU_UNUSED __attribute__((unused))

/* The PostgreSQL run (docs/controller.md "Store: PostgreSQL"): with
 * FL_TEST_PG_DSN (a libpq conninfo of a server where we may create
 * databases) or FL_TEST_PG_DSN_FILE (a file holding it, written by
 * tests/pg/start.sh), every ctu_open() gets a fresh database instead of a
 * SQLite file. A DSN file that is missing fails the test: a PostgreSQL run
 * must not silently test SQLite. */
static char ctu_pg_base[512];
static char ctu_pg_db[64];      /* the current ctu_open()'s database */
static char ctu_pg_cur[640];    /* its conninfo */

/* The server's conninfo, or NULL for the SQLite run. */
static CTU_UNUSED const char *ctu_pg_dsn(void)
{
	if (ctu_pg_base[0])
		return ctu_pg_base;
	const char *e = getenv("FL_TEST_PG_DSN");
	const char *file = getenv("FL_TEST_PG_DSN_FILE");
	if (e && *e) {
		fl_strlcpy(ctu_pg_base, e, sizeof(ctu_pg_base));
	} else if (file && *file) {
		FILE *f = fopen(file, "r");
		if (!f)
			fail_msg("FL_TEST_PG_DSN_FILE=%s: cannot read it: is the PostgreSQL fixture"
				 " (tests/pg/start.sh) running?", file);
		if (!fgets(ctu_pg_base, sizeof(ctu_pg_base), f))
			ctu_pg_base[0] = 0;
		fclose(f);
		ctu_pg_base[strcspn(ctu_pg_base, "\n")] = 0;
		if (!ctu_pg_base[0])
			fail_msg("FL_TEST_PG_DSN_FILE=%s is empty", file);
	} else {
		return NULL;
	}
	return ctu_pg_base;
}

static void ctu_pg_quiet(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

/* Run SQL on the server's maintenance database. */
static CTU_UNUSED void ctu_pg_exec(const char *sql)
{
	PGconn *pc = PQconnectdb(ctu_pg_dsn());
	if (PQstatus(pc) != CONNECTION_OK)
		fail_msg("PostgreSQL %s: %s", ctu_pg_dsn(), PQerrorMessage(pc));
	PQsetNoticeProcessor(pc, ctu_pg_quiet, NULL);
	PGresult *res = PQexec(pc, sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		fail_msg("PostgreSQL: %s: %s", sql, PQresultErrorMessage(res));
	PQclear(res);
	PQfinish(pc);
}

/* A fresh database: its conninfo (valid until the next call), NULL for the
 * SQLite run. */
static CTU_UNUSED const char *ctu_pg_new_db(void)
{
	static unsigned n;
	if (!ctu_pg_dsn())
		return NULL;
	snprintf(ctu_pg_db, sizeof(ctu_pg_db), "ctu_%ld_%u", (long)getpid(), n++);
	char sql[128];
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", ctu_pg_db);
	ctu_pg_exec(sql);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", ctu_pg_db);
	ctu_pg_exec(sql);
	snprintf(ctu_pg_cur, sizeof(ctu_pg_cur), "%s dbname=%s", ctu_pg_base, ctu_pg_db);
	return ctu_pg_cur;
}

/* The store conninfo of the last ctu_open() (NULL for SQLite): tests that
 * reopen a controller on the same data dir set ctl_opts.store_dsn to it. */
static CTU_UNUSED const char *ctu_store_dsn(void)
{
	return ctu_pg_dsn() && ctu_pg_db[0] ? ctu_pg_cur : NULL;
}

/* Open a controller on a fresh data dir (path in *ret_dir, caller frees)
 * and a fresh store (SQLite in the dir, or a new PostgreSQL database). */
static CTU_UNUSED struct ctl *ctu_open(const char *tag, const struct ctl_opts *base, char **ret_dir)
{
	char *dir = fl_test_mkdtemp(tag);
	assert_non_null(dir);
	struct ctl_opts o = base ? *base : (struct ctl_opts){0};
	o.data_dir = dir;
	o.store_dsn = ctu_pg_new_db();
	struct ctl *c = NULL;
	assert_int_equal(ctl_open(&o, &c), 0);
	*ret_dir = dir;
	return c;
}

static CTU_UNUSED void ctu_close(struct ctl *c, char *dir)
{
	ctl_free(c);
	fl_rm_rf(dir);
	free(dir);
	if (ctu_store_dsn()) {
		char sql[128];
		snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", ctu_pg_db);
		ctu_pg_exec(sql);
		ctu_pg_db[0] = 0;
	}
}

/* Audit rows of ACTION whose reason is LIKE the pattern, read from the
 * store of the controller on DIR (SQLite file or the PostgreSQL database of
 * the last ctu_open()) with a connection of its own. */
static CTU_UNUSED int ctu_audit_rows(const char *dir, const char *action, const char *like)
{
	static const char sql[] = "SELECT COUNT(*) FROM audit WHERE action = $1 AND reason LIKE $2";
	int n;
	if (ctu_store_dsn()) {
		PGconn *pc = PQconnectdb(ctu_store_dsn());
		assert_int_equal(PQstatus(pc), CONNECTION_OK);
		const char *v[2] = {action, like};
		PGresult *res = PQexecParams(pc, sql, 2, NULL, v, NULL, NULL, 0);
		assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
		n = atoi(PQgetvalue(res, 0, 0));
		PQclear(res);
		PQfinish(pc);
		return n;
	}
	char path[512];
	snprintf(path, sizeof(path), "%s/controller.db", dir);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	sqlite3_stmt *st = NULL;
	/* SQLite reads $1 as a named parameter numbered in order of appearance */
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_text(st, 1, action, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, like, -1, SQLITE_STATIC);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	n = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* The device's JSON as text (NULL when unknown); caller frees. */
static CTU_UNUSED char *ctu_device_text(struct ctl *c, const char *id)
{
	cJSON *o = NULL;
	if (ctl_device_get(c, id, &o) < 0)
		return NULL;
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

static CTU_UNUSED int ctu_count_devices(struct ctl *c, const struct ctl_device_filter *f)
{
	struct ctl_device_filter all = {.online = -1};
	cJSON *o = NULL;
	assert_int_equal(ctl_devices_list(c, f ? f : &all, &o), 0);
	int n = cJSON_GetArraySize(cJSON_GetObjectItem(o, "devices"));
	cJSON_Delete(o);
	return n;
}

#endif
