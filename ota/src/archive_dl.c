/* libarchive loaded on demand: see archive_dl.h. */
#define FL_ARCHIVE_DL_IMPL 1
#include "archive_dl.h"

#include <dlfcn.h>
#include <pthread.h>

#include <flotilla/error.h>
#include <flotilla/log.h>

#ifndef FL_ARCHIVE_SONAME
#define FL_ARCHIVE_SONAME "libarchive.so.13"
#endif

struct fl_archive_fns fl_archive_fns;
static int load_err;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load(void)
{
	/* RTLD_NODELETE: the pointers stay valid for the life of the process. */
	void *dl = dlopen(FL_ARCHIVE_SONAME, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (!dl) {
		fl_log(FL_LOG_ERR, "bundle: cannot load %s: %s", FL_ARCHIVE_SONAME, dlerror());
		load_err = -FL_EUNSUPPORTED;
		return;
	}
#define FL_ARCHIVE_SYM(f)                                                               \
	*(void **)&fl_archive_fns.p_##f = dlsym(dl, #f);                                 \
	if (!fl_archive_fns.p_##f) {                                                     \
		fl_log(FL_LOG_ERR, "bundle: %s: no symbol %s", FL_ARCHIVE_SONAME, #f);  \
		load_err = -FL_EUNSUPPORTED;                                             \
	}
	FL_ARCHIVE_FUNCS(FL_ARCHIVE_SYM)
#undef FL_ARCHIVE_SYM
}

int fl_archive_load(void)
{
	pthread_once(&load_once, load);
	return load_err;
}
