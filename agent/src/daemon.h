#ifndef FLOTILLA_AGENT_DAEMON_H
#define FLOTILLA_AGENT_DAEMON_H

struct agent;

/* Run the service loop until SIGTERM/SIGINT (0) or a fatal error (<0). */
int agent_run(struct agent *a);

#endif
