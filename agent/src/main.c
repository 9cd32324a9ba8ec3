/* flotilla-agent: the device daemon and its local commands. */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agent.h"
#include "daemon.h"
#include <flotilla/runner.h>
#include <flotilla/error.h>
#include <flotilla/fs.h>
#include <flotilla/log.h>
#include <flotilla/util.h>

static void usage(FILE *f)
{
	fputs("usage: flotilla-agent [OPTIONS] COMMAND [ARGS]\n"
	      "\n"
	      "Commands:\n"
	      "  run                       the service: install bundles dropped in STATE/spool,\n"
	      "                            and over MQTT when [mqtt] uri is set (docs/agent.md)\n"
	      "  run-model MODEL --prompt T  try a model: generate and print timings\n"
	      "  install BUNDLE.tar        verify, stage, test and switch to a signed bundle\n"
	      "  status [--json]           slots, versions, install state, last error\n"
	      "  revert MODEL              go back to the version in the other slot\n"
	      "  check                     verify slots, finish or undo interrupted steps\n"
	      "  trust install-keyring F   install a newer root-signed keyring\n"
	      "\n"
	      "Options:\n"
	      "  -c, --config FILE         config file (default " AGENT_DEFAULT_CONFIG
	      " if it exists)\n"
	      "  -s, --state-dir DIR       state directory (default " AGENT_DEFAULT_STATE_DIR ")\n"
	      "  -t, --trust-dir DIR       root keys directory (default " AGENT_DEFAULT_TRUST_DIR
	      ")\n",
	      f);
}

static int fail(int err, const char *what)
{
	fprintf(stderr, "flotilla-agent: %s: %s\n", what, fl_strerror(err));
	return 1;
}

static const char *slot_status_name(enum slot_status s)
{
	return s == SLOT_READY ? "ready" : s == SLOT_STAGING ? "staging" : "empty";
}

struct status_ctx {
	struct agent *a;
	cJSON *models;
	bool json;
};

static int status_model(void *ud, const struct model_rec *mr)
{
	struct status_ctx *c = ud;
	struct ota_slots *s = NULL;
	int r = ota_slots_open(c->a->models_dir, mr->name, &s);
	if (r < 0)
		return r;
	char cur = ota_slots_current(s);
	ota_slots_free(s);
	cJSON *m = cJSON_AddObjectToObject(c->models, mr->name);
	char cs[2] = {cur, 0};
	cJSON_AddStringToObject(m, "current", cur ? cs : "");
	cJSON_AddNumberToObject(m, "highest_sequence", (double)mr->highest_sequence);
	cJSON *slots = cJSON_AddObjectToObject(m, "slots");
	if (!c->json)
		printf("%s: current slot %s, highest sequence %llu\n", mr->name, cur ? cs : "none",
		       (unsigned long long)mr->highest_sequence);
	for (char slot = 'a'; slot <= 'b'; slot++) {
		struct slot_rec sr;
		r = journal_slot_get(c->a->journal, mr->name, slot, &sr);
		if (r < 0)
			return r;
		free(sr.envelope);
		char name[2] = {slot, 0};
		cJSON *o = cJSON_AddObjectToObject(slots, name);
		cJSON_AddStringToObject(o, "status", slot_status_name(sr.status));
		cJSON_AddStringToObject(o, "version", sr.version);
		cJSON_AddNumberToObject(o, "sequence", (double)sr.sequence);
		if (!c->json)
			printf("  slot %c%s: %s %s (sequence %llu)\n", slot, slot == cur ? "*" : " ",
			       slot_status_name(sr.status), sr.version[0] ? sr.version : "-",
			       (unsigned long long)sr.sequence);
	}
	struct install_rec ir;
	r = journal_install_last(c->a->journal, mr->name, &ir);
	if (r < 0)
		return r;
	if (r > 0) {
		cJSON *o = cJSON_AddObjectToObject(m, "last_install");
		cJSON_AddNumberToObject(o, "id", (double)ir.id);
		cJSON_AddStringToObject(o, "version", ir.version);
		cJSON_AddStringToObject(o, "state", inst_state_name(ir.state));
		cJSON_AddStringToObject(o, "error", ir.error);
		if (!c->json)
			printf("  last install: %s %s%s%s\n", ir.version, inst_state_name(ir.state),
			       ir.error[0] ? ": " : "", ir.error);
	}
	return 0;
}

static int cmd_status(struct agent *a, bool json)
{
	struct status_ctx c = {.a = a, .json = json};
	cJSON *root = cJSON_CreateObject();
	c.models = cJSON_AddObjectToObject(root, "models");
	int r = journal_models(a->journal, status_model, &c);
	if (r == 0 && json) {
		char *s = cJSON_Print(root);
		puts(s);
		free(s);
	} else if (r == 0 && !c.models->child) {
		puts("no models installed");
	}
	cJSON_Delete(root);
	return r < 0 ? fail(r, "status") : 0;
}

int main(int argc, char **argv)
{
	/* Runner mode (a child of the service, one per served model): before
	 * anything else, it has its own arguments. */
	if (argc > 1 && !strcmp(argv[1], "runner"))
		return rt_runner_cli(argc, argv);
	fl_log_init("flotilla-agent");
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"state-dir", required_argument, NULL, 's'},
		{"trust-dir", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	const char *config = NULL, *state_dir = NULL, *trust_dir = NULL;
	int o;
	while ((o = getopt_long(argc, argv, "+c:s:t:h", opts, NULL)) != -1) {
		switch (o) {
		case 'c': config = optarg; break;
		case 's': state_dir = optarg; break;
		case 't': trust_dir = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind];
	if (!strcmp(cmd, "run-model"))
		return agent_run_model(argc - optind, argv + optind);
	int nargs = argc - optind - 1;
	char **args = argv + optind + 1;

	if (!config && access(AGENT_DEFAULT_CONFIG, R_OK) == 0)
		config = AGENT_DEFAULT_CONFIG;
	struct agent_config cfg;
	char err[512] = "";
	int r = agent_config_load(config, &cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "flotilla-agent: %s\n", err[0] ? err : fl_strerror(r));
		return 1;
	}
	if (state_dir)
		fl_strlcpy(cfg.state_dir, state_dir, sizeof(cfg.state_dir));
	if (trust_dir)
		fl_strlcpy(cfg.trust_dir, trust_dir, sizeof(cfg.trust_dir));

	bool known = !strcmp(cmd, "run") || !strcmp(cmd, "install") || !strcmp(cmd, "status") || !strcmp(cmd, "revert") ||
		     !strcmp(cmd, "check") || !strcmp(cmd, "trust");
	if (!known) {
		fprintf(stderr, "flotilla-agent: unknown command '%s' (try --help)\n", cmd);
		return 2;
	}
	struct agent a;
	bool read_only = !strcmp(cmd, "status");
	r = agent_open(&a, &cfg, read_only);
	if (r < 0)
		return fail(r, cfg.state_dir);
	if (!strcmp(cmd, "run")) {
		/* The service's threads (one per HTTP connection, runner
		 * supervisors) allocate little: two malloc arenas instead of up
		 * to 8 per core keep its resident memory small. */
		mallopt(M_ARENA_MAX, 2);
		r = agent_run(&a);
		agent_close(&a);
		return r < 0 ? fail(r, "run") : 0;
	}
	/* Whatever a crash interrupted is finished or undone before anything else. */
	r = read_only ? 0 : agent_recover(&a, false);
	if (r < 0) {
		agent_close(&a);
		return fail(r, "recovery");
	}
	int rc = 0;
	if (!strcmp(cmd, "install")) {
		if (nargs != 1) {
			fputs("usage: flotilla-agent install BUNDLE.tar\n", stderr);
			rc = 2;
		} else if ((r = agent_install_bundle(&a, args[0])) < 0) {
			rc = fail(r, args[0]);
		} else {
			printf("installed %s\n", args[0]);
		}
	} else if (!strcmp(cmd, "status")) {
		bool json = nargs == 1 && !strcmp(args[0], "--json");
		if (nargs > 1 || (nargs == 1 && !json)) {
			fputs("usage: flotilla-agent status [--json]\n", stderr);
			rc = 2;
		} else {
			rc = cmd_status(&a, json);
		}
	} else if (!strcmp(cmd, "revert")) {
		if (nargs != 1) {
			fputs("usage: flotilla-agent revert MODEL\n", stderr);
			rc = 2;
		} else if ((r = agent_revert(&a, args[0], "revert requested by command")) < 0) {
			rc = fail(r, args[0]);
		} else {
			printf("reverted %s\n", args[0]);
		}
	} else if (!strcmp(cmd, "check")) {
		int problems = agent_check(&a);
		if (problems < 0)
			rc = fail(problems, "check");
		else if ((r = agent_trial_tick(&a)) < 0)
			rc = fail(r, "check");
		else
			printf("check: %d problem(s) found and handled\n", problems);
	} else if (!strcmp(cmd, "trust")) {
		if (nargs != 2 || strcmp(args[0], "install-keyring") != 0) {
			fputs("usage: flotilla-agent trust install-keyring KEYRING.dsse.json\n", stderr);
			rc = 2;
		} else if (!a.trust) {
			rc = fail(-FL_EKEYUNKNOWN, "no usable trust store");
		} else {
			char *data = NULL;
			size_t len;
			r = fl_read_file(args[1], OTA_DSSE_MAX_BYTES, &data, &len);
			if (r == 0)
				r = ota_trust_install_keyring(a.trust, data, len, fl_now_s());
			free(data);
			if (r < 0)
				rc = fail(r, args[1]);
			else
				printf("keyring %s\n", r == 1 ? "installed" : "already installed");
		}
	}
	agent_close(&a);
	return rc;
}
