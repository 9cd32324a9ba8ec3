/* Placeholder until the module has real sources. */
int fl_ota_placeholder(void);
int fl_ota_placeholder(void) { return 0; }
