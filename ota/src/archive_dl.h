/* libarchive, loaded with dlopen() on first use.
 *
 * Only bundle reading and writing need libarchive, but linking it maps it
 * and its dependency chain (libxml2, ICU, libstdc++, nettle, lzma, zstd,
 * lz4, bz2, acl): ~2.5 MiB of resident pages in an idle agent
 * (docs/serving.md, "Memory"). bundle.c includes this header instead of
 * <archive.h>: every archive_* name it uses is redirected to a pointer in
 * fl_archive_fns, filled by fl_archive_load() with the library's SONAME.
 * A program that also links libarchive (the tests) gets the same copy. */
#pragma once

#include <archive.h>
#include <archive_entry.h>

#define FL_ARCHIVE_FUNCS(X) \
	X(archive_entry_filetype) \
	X(archive_entry_free) \
	X(archive_entry_hardlink) \
	X(archive_entry_new) \
	X(archive_entry_pathname) \
	X(archive_entry_set_filetype) \
	X(archive_entry_set_gid) \
	X(archive_entry_set_mtime) \
	X(archive_entry_set_pathname) \
	X(archive_entry_set_perm) \
	X(archive_entry_set_size) \
	X(archive_entry_set_uid) \
	X(archive_entry_size) \
	X(archive_entry_size_is_set) \
	X(archive_entry_sparse_reset) \
	X(archive_entry_symlink) \
	X(archive_errno) \
	X(archive_read_data_block) \
	X(archive_read_free) \
	X(archive_read_new) \
	X(archive_read_next_header) \
	X(archive_read_open_fd) \
	X(archive_read_open_memory) \
	X(archive_read_support_format_tar) \
	X(archive_write_close) \
	X(archive_write_data) \
	X(archive_write_free) \
	X(archive_write_header) \
	X(archive_write_new) \
	X(archive_write_open_fd) \
	X(archive_write_set_bytes_in_last_block) \
	X(archive_write_set_bytes_per_block) \
	X(archive_write_set_format_pax_restricted)

struct fl_archive_fns {
#define FL_ARCHIVE_PTR(f) __typeof__(f) *p_##f;
	FL_ARCHIVE_FUNCS(FL_ARCHIVE_PTR)
#undef FL_ARCHIVE_PTR
};
extern struct fl_archive_fns fl_archive_fns;

/* Loads the library once per process (thread-safe). 0, or -FL_EUNSUPPORTED
 * when it or one of its functions is missing (logged with dlerror()). */
int fl_archive_load(void);

#ifndef FL_ARCHIVE_DL_IMPL
#define archive_entry_filetype (*fl_archive_fns.p_archive_entry_filetype)
#define archive_entry_free (*fl_archive_fns.p_archive_entry_free)
#define archive_entry_hardlink (*fl_archive_fns.p_archive_entry_hardlink)
#define archive_entry_new (*fl_archive_fns.p_archive_entry_new)
#define archive_entry_pathname (*fl_archive_fns.p_archive_entry_pathname)
#define archive_entry_set_filetype (*fl_archive_fns.p_archive_entry_set_filetype)
#define archive_entry_set_gid (*fl_archive_fns.p_archive_entry_set_gid)
#define archive_entry_set_mtime (*fl_archive_fns.p_archive_entry_set_mtime)
#define archive_entry_set_pathname (*fl_archive_fns.p_archive_entry_set_pathname)
#define archive_entry_set_perm (*fl_archive_fns.p_archive_entry_set_perm)
#define archive_entry_set_size (*fl_archive_fns.p_archive_entry_set_size)
#define archive_entry_set_uid (*fl_archive_fns.p_archive_entry_set_uid)
#define archive_entry_size (*fl_archive_fns.p_archive_entry_size)
#define archive_entry_size_is_set (*fl_archive_fns.p_archive_entry_size_is_set)
#define archive_entry_sparse_reset (*fl_archive_fns.p_archive_entry_sparse_reset)
#define archive_entry_symlink (*fl_archive_fns.p_archive_entry_symlink)
#define archive_errno (*fl_archive_fns.p_archive_errno)
#define archive_read_data_block (*fl_archive_fns.p_archive_read_data_block)
#define archive_read_free (*fl_archive_fns.p_archive_read_free)
#define archive_read_new (*fl_archive_fns.p_archive_read_new)
#define archive_read_next_header (*fl_archive_fns.p_archive_read_next_header)
#define archive_read_open_fd (*fl_archive_fns.p_archive_read_open_fd)
#define archive_read_open_memory (*fl_archive_fns.p_archive_read_open_memory)
#define archive_read_support_format_tar (*fl_archive_fns.p_archive_read_support_format_tar)
#define archive_write_close (*fl_archive_fns.p_archive_write_close)
#define archive_write_data (*fl_archive_fns.p_archive_write_data)
#define archive_write_free (*fl_archive_fns.p_archive_write_free)
#define archive_write_header (*fl_archive_fns.p_archive_write_header)
#define archive_write_new (*fl_archive_fns.p_archive_write_new)
#define archive_write_open_fd (*fl_archive_fns.p_archive_write_open_fd)
#define archive_write_set_bytes_in_last_block (*fl_archive_fns.p_archive_write_set_bytes_in_last_block)
#define archive_write_set_bytes_per_block (*fl_archive_fns.p_archive_write_set_bytes_per_block)
#define archive_write_set_format_pax_restricted (*fl_archive_fns.p_archive_write_set_format_pax_restricted)
#endif
