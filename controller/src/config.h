/* flotilla-controller's configuration file (docs/controller.md):
 *
 *   [controller]
 *   data_dir = /var/lib/flotilla-controller     # required
 *   listen = 127.0.0.1                          # numeric address
 *   port = 8080                                 # 0: any free port
 *   trust_dir = /etc/flotilla/trust             # optional: verify pushed bundles
 *   store = sqlite                              # or postgresql
 *   store_dsn = host=db port=5432 dbname=flotilla  # libpq conninfo (postgresql only)
 *   read_tokens = grafana:SECRET1, SECRET2      # NAME:SECRET or SECRET
 *   operator_tokens = ci:SECRET3
 *   max_upload_bytes = 4G
 *   ingest_batch_records = 5000
 *   ingest_flush_ms = 200
 *   log_level = info
 *
 *   [mqtt]                                      # optional: no MQTT without it
 *   uri = ssl://broker.example:8883             # ssl:// or mqtts:// (tcp:// for tests)
 *   ca = /etc/flotilla/pki/ca.crt               # the fleet CA
 *   cert = /etc/flotilla/pki/controller.crt     # this instance's certificate
 *   key = /etc/flotilla/pki/controller.key
 *   client_id = flotilla-controller             # default: the certificate's CN
 *   verify_host = true
 */
#ifndef FLOTILLA_CTL_CONFIG_H
#define FLOTILLA_CTL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

struct ctl_config {
	char *data_dir;
	char *listen;
	uint16_t port;
	char *trust_dir; /* NULL: none */
	char *store_dsn; /* NULL: SQLite store in data_dir; else PostgreSQL conninfo */
	char *log_level; /* NULL: default */
	struct ctl_token tokens[CTL_HTTP_MAX_TOKENS];
	size_t n_tokens;
	uint64_t max_upload_bytes;
	size_t batch_records;
	int64_t flush_ms;
	/* [mqtt]: mqtt_uri NULL when absent */
	char *mqtt_uri, *mqtt_ca, *mqtt_cert, *mqtt_key, *mqtt_client_id;
	bool mqtt_verify_host;
};

/* Load and check PATH. Unknown keys, a missing data_dir, a token shorter than
 * 16 bytes or repeated, more than CTL_HTTP_MAX_TOKENS tokens: -FL_ECONFIG
 * with a message in RET_ERR. Caller frees with ctl_config_free(). */
int ctl_config_load(const char *path, struct ctl_config *ret, char *ret_err, size_t err_len);
void ctl_config_free(struct ctl_config *cfg);

#endif
