/* Failpoints: named places where a test can make the process die (as a power
 * cut would) or make a call fail.
 *
 * FLOTILLA_FAILPOINTS="name=action[,name=action...]" where action is
 *   exit      _exit(FL_FAILPOINT_EXIT_CODE) at once: no atexit, no stdio flush,
 *             no fsync: what was not on disk is lost, as with a power cut;
 *   kill      raise SIGKILL;
 *   fail      FL_FAILPOINT() returns -FL_EFAILPOINT and the caller fails;
 *   N*action  act only on the N-th time the point is reached (1-based).
 * FLOTILLA_FAILPOINT_TRACE=FILE appends the name of every point reached (one
 * per line) so a test can first record the points of a run and then loop over
 * them.
 *
 * FL_FAILPOINT(name) evaluates to 0 when nothing is armed. The environment is
 * read once; fl_failpoint_reload() re-reads it (tests). Thread-safe. */
#ifndef FLOTILLA_FAILPOINT_H
#define FLOTILLA_FAILPOINT_H

#define FL_FAILPOINT_EXIT_CODE 86

int fl_failpoint_hit(const char *name);
void fl_failpoint_reload(void);

#define FL_FAILPOINT(name) fl_failpoint_hit(name)

#endif
