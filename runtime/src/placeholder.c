/* Placeholder until the module has real sources. */
int fl_runtime_placeholder(void);
int fl_runtime_placeholder(void) { return 0; }
