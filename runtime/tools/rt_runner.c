/* rt-runner: a runner process (runner.h) for tests and demos:
 *   rt-runner runner --fd 3 --backend gguf --model PATH [--threads N] [--ctx N] [--mem-bytes N] */
#include "flotilla/runner.h"

int main(int argc, char **argv) { return rt_runner_cli(argc, argv); }
