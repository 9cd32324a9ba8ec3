/* Scope-bound cleanup helpers (systemd style). A variable declared with one of
 * these is released when it goes out of scope, so early error returns leak
 * nothing. Hand ownership away with fl_steal_ptr()/fl_steal_fd(). */
#ifndef FLOTILLA_CLEANUP_H
#define FLOTILLA_CLEANUP_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline void fl_freep(void *p) { free(*(void **)p); }
static inline void fl_closep(int *fd) { if (*fd >= 0) close(*fd); }
static inline void fl_fclosep(FILE **f) { if (*f) fclose(*f); }

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(fl_freep)
#define _cleanup_close_ _cleanup_(fl_closep)
#define _cleanup_fclose_ _cleanup_(fl_fclosep)

/* Declare a cleanup function for a type whose free function takes a pointer. */
#define FL_DEFINE_CLEANUP(type, func) \
	static inline void func##p(type **p) { if (*p) func(*p); }

static inline void *fl_steal_ptr_impl(void **p) { void *v = *p; *p = NULL; return v; }
#define fl_steal_ptr(p) fl_steal_ptr_impl((void **)&(p))
static inline int fl_steal_fd(int *fd) { int v = *fd; *fd = -1; return v; }

#define FL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
