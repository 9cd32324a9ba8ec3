/* File helpers with the durability rules every install step relies on:
 * write to a temporary name in the same directory, fsync, rename over the
 * target, fsync the directory. Failpoints: "fs.atomic.before_rename",
 * "fs.atomic.after_rename". */
#ifndef FLOTILLA_FS_H
#define FLOTILLA_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Atomically replace PATH with LEN bytes of DATA (mode MODE). On error the old
 * file (if any) is untouched and no temporary file is left behind. */
int fl_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* Read a whole file of at most MAX_BYTES. On success *ret_data (NUL-terminated,
 * caller frees with free()) and *ret_len are set. Larger files: -FL_ETOOBIG. */
int fl_read_file(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len);

/* fsync the directory that holds PATH (PATH itself if it is a directory when
 * IS_DIR). */
int fl_fsync_dir(const char *dir);
int fl_fsync_parent(const char *path);

/* Write all LEN bytes to FD, retrying short writes and EINTR. */
int fl_write_all(int fd, const void *data, size_t len);
/* Read exactly LEN bytes (returns -EIO on early EOF). */
int fl_read_all(int fd, void *data, size_t len);

/* mkdir -p with MODE for the directories it creates. */
int fl_mkdir_p(const char *path, mode_t mode);
/* rm -rf, never following symlinks; a missing PATH is success. */
int fl_rm_rf(const char *path);
/* Atomically point symlink LINK at TARGET (symlink to LINK.tmp, rename, fsync
 * parent). Failpoints "fs.symlink.before_rename", "fs.symlink.after_rename". */
int fl_symlink_atomic(const char *target, const char *link);

/* Free bytes available to unprivileged users on the file system of PATH. */
int fl_disk_free(const char *path, uint64_t *ret_bytes);

/* Join A and B with one '/'; caller frees. NULL on out of memory. */
char *fl_path_join(const char *a, const char *b);

#endif
