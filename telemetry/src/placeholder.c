/* Placeholder until the module has real sources. */
int fl_telemetry_placeholder(void);
int fl_telemetry_placeholder(void) { return 0; }
