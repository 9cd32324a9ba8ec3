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

#include <flotilla/fs.h>
#include <flotilla/util.h>

#include "ctl.h"
#include "testutil.h"

#define CTU_UNUSED __attribute__((unused))

/* Open a controller on a fresh data dir (path in *ret_dir, caller frees). */
static CTU_UNUSED struct ctl *ctu_open(const char *tag, const struct ctl_opts *base, char **ret_dir)
{
	char *dir = fl_test_mkdtemp(tag);
	assert_non_null(dir);
	struct ctl_opts o = base ? *base : (struct ctl_opts){0};
	o.data_dir = dir;
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
