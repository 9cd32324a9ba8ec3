/* Shared helpers for the ota trust tests (crypto, dsse, keyring, manifest,
 * trust): scratch directories under FL_TEST_TMPDIR, keys, and signed
 * envelopes. Include after <cmocka.h>. */
#ifndef OTA_TESTUTIL_H
#define OTA_TESTUTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <flotilla/cleanup.h>
#include <flotilla/crypto.h>
#include <flotilla/dsse.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/util.h>

#define TU_UNUSED __attribute__((unused))

/* Fixed clock for the tests: 2026-11-25T00:00:00Z. */
#define TU_NOW 1795564800LL
#define TU_DAY 86400LL

/* A fresh empty directory FL_TEST_TMPDIR/<name>-<pid>; caller frees. */
static TU_UNUSED char *tu_tmpdir(const char *name)
{
	const char *base = getenv("FL_TEST_TMPDIR");
	if (!base)
		base = "/tmp";
	char *dir = fl_asprintf("%s/%s-%ld", base, name, (long)getpid());
	assert_non_null(dir);
	assert_int_equal(fl_rm_rf(dir), 0);
	assert_int_equal(fl_mkdir_p(dir, 0755), 0);
	return dir;
}

static TU_UNUSED char *tu_path(const char *dir, const char *file)
{
	char *p = fl_path_join(dir, file);
	assert_non_null(p);
	return p;
}

static TU_UNUSED struct ota_key *tu_key(void)
{
	struct ota_key *k = NULL;
	assert_int_equal(ota_key_generate(&k), 0);
	assert_non_null(k);
	return k;
}

/* A DSSE envelope of TYPE over PAYLOAD signed by KEYS[0..N); caller frees. */
static TU_UNUSED __attribute__((noinline)) char *tu_envelope(const char *type, const char *payload,
				   struct ota_key *const *keys, size_t n)
{
	struct ota_dsse *env = NULL;
	assert_int_equal(ota_dsse_new(type, payload, strlen(payload), &env), 0);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(ota_dsse_sign(env, keys[i]), 0);
	char *json = NULL;
	assert_int_equal(ota_dsse_to_json(env, &json, NULL), 0);
	ota_dsse_free(env);
	return json;
}

/* Whole file contents (NUL-terminated) or NULL when missing; caller frees. */
static TU_UNUSED char *tu_read(const char *path, size_t *ret_len)
{
	char *data = NULL;
	size_t len = 0;
	if (fl_read_file(path, 16 * 1024 * 1024, &data, &len) < 0)
		return NULL;
	if (ret_len)
		*ret_len = len;
	return data;
}

static TU_UNUSED void tu_write(const char *path, const char *data)
{
	assert_int_equal(fl_write_file_atomic(path, data, strlen(data), 0644), 0);
}

#endif
