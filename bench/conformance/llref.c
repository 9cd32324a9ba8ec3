/*
 * bench/conformance/llref.c - llama.cpp reference driver for conformance checks.
 *
 * NOT part of the project's CMake build: bench/llamacpp-ref.sh compiles it
 * against the cached llama.cpp build (libllama) into
 * $FLOTILLA_CACHE/llama.cpp-build/bin/llref.
 *
 * Loads a GGUF model, takes a prompt (text, tokenized by llama.cpp) or token
 * ids, runs greedy decoding (argmax over raw logits, ties -> lowest id, no
 * sampling, EOG does not stop unless --stop-eog) for N tokens on the CPU and
 * writes:
 *   - a text report (stdout or -o FILE), lines:
 *       llref 1
 *       n_vocab <V>
 *       prompt <n> <id> <id> ...
 *       gen <n> <id> <id> ...
 *       timing prompt_tokens <n> prompt_ms <ms> gen_tokens <n> gen_ms <ms>
 *   - --logits FILE: the final logits, V little-endian float32 (raw, no header):
 *       the distribution from which the LAST generated token was chosen, i.e. the
 *       output at the last position of prompt + gen[0..N-2]; with -n 0 the
 *       output at the last prompt position.
 *   - --logits-prompt FILE: the logits at the last prompt position (first step).
 *
 * Usage: llref -m MODEL.gguf (-p TEXT | -i "1,2,3") [-n N] [-t THREADS]
 *              [-o REPORT] [--logits F] [--logits-prompt F] [--no-bos]
 *              [--no-parse-special] [--kv-f16] [--fa on|off|auto] [--stop-eog]
 *              [--no-repack] [-v]
 * Defaults: -n 64, -t 2, BOS added if the vocab says so, special tokens in the
 * prompt text parsed, K/V cache F32 (exact-as-possible reference), FA off.
 * Exit 0 on success, 1 on usage/runtime error (one line on stderr).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama.h"

#define LLREF_MAX_TOKENS 65536
#define LLREF_MAX_GEN 32768

struct llref_opts {
    const char *model;
    const char *prompt;
    const char *ids;
    const char *report;
    const char *logits;
    const char *logits_prompt;
    int n_gen;
    int threads;
    int add_bos;
    int parse_special;
    int kv_f16;
    int fa; /* -1 auto, 0 off, 1 on */
    int stop_eog;
    int no_repack; /* --no-repack: no extra buffer types (Q4_0/Q4_K weights
                      stay in file layout: ggml_vec_dot / tinyBLAS kernels) */
    int verbose;
};

static int g_verbose;

static void quiet_log(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int usage(const char *msg)
{
    fprintf(stderr, "llref: error: %s (usage: llref -m MODEL (-p TEXT | -i IDS) [-n N] [-t T] "
                    "[-o REPORT] [--logits F] [--logits-prompt F] [--no-bos] "
                    "[--no-parse-special] [--kv-f16] [--fa on|off|auto] [--stop-eog] [--no-repack] [-v])\n",
            msg);
    return 1;
}

static int parse_int(const char *s, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

/* "1,2 3" -> ids; returns count or -1. */
static int parse_ids(const char *s, llama_token *out, int max, int n_vocab)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            break;
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno != 0 || end == p || v < 0 || v >= n_vocab || n >= max)
            return -1;
        out[n++] = (llama_token)v;
        p = end;
    }
    return n;
}

static llama_token argmax(const float *logits, int n_vocab)
{
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return (llama_token)best;
}

static int write_f32(const char *path, const float *v, int n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(v, sizeof(float), (size_t)n, f);
    int rc = fclose(f);
    return (w == (size_t)n && rc == 0) ? 0 : -1;
}

static int parse_args(int argc, char **argv, struct llref_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->n_gen = 64;
    o->threads = 2;
    o->add_bos = 1;
    o->parse_special = 1;
    o->fa = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "-m")) o->model = v;
        else if (!strcmp(a, "-p")) o->prompt = v;
        else if (!strcmp(a, "-i")) o->ids = v;
        else if (!strcmp(a, "-o")) o->report = v;
        else if (!strcmp(a, "--logits")) o->logits = v;
        else if (!strcmp(a, "--logits-prompt")) o->logits_prompt = v;
        else if (!strcmp(a, "-n")) {
            if (!v || parse_int(v, 0, LLREF_MAX_GEN, &o->n_gen)) return usage("bad -n");
        } else if (!strcmp(a, "-t")) {
            if (!v || parse_int(v, 1, 512, &o->threads)) return usage("bad -t");
        } else if (!strcmp(a, "--fa")) {
            if (!v) return usage("--fa needs on|off|auto");
            if (!strcmp(v, "on")) o->fa = 1;
            else if (!strcmp(v, "off")) o->fa = 0;
            else if (!strcmp(v, "auto")) o->fa = -1;
            else return usage("--fa needs on|off|auto");
        } else {
            takes = 0;
            if (!strcmp(a, "--no-bos")) o->add_bos = 0;
            else if (!strcmp(a, "--no-parse-special")) o->parse_special = 0;
            else if (!strcmp(a, "--kv-f16")) o->kv_f16 = 1;
            else if (!strcmp(a, "--stop-eog")) o->stop_eog = 1;
            else if (!strcmp(a, "--no-repack")) o->no_repack = 1;
            else if (!strcmp(a, "-v")) o->verbose = 1;
            else return usage("unknown argument");
        }
        if (takes) {
            if (!v) return usage("missing value");
            i++;
        }
    }
    if (!o->model) return usage("-m is required");
    if ((o->prompt == NULL) == (o->ids == NULL)) return usage("exactly one of -p / -i is required");
    return 0;
}

int main(int argc, char **argv)
{
    struct llref_opts o;
    if (parse_args(argc, argv, &o))
        return 1;
    g_verbose = o.verbose;
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    int rc = 1;
    struct llama_model *model = NULL;
    struct llama_context *ctx = NULL;
    llama_token *toks = NULL;
    FILE *rep = stdout;

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    if (o.no_repack)
        mp.use_extra_bufts = false;
    model = llama_model_load_from_file(o.model, mp);
    if (!model) {
        fprintf(stderr, "llref: error: cannot load model %s\n", o.model);
        goto out;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    toks = calloc((size_t)LLREF_MAX_TOKENS + LLREF_MAX_GEN, sizeof(*toks));
    if (!toks) {
        fprintf(stderr, "llref: error: out of memory\n");
        goto out;
    }
    int n_prompt;
    if (o.ids) {
        n_prompt = parse_ids(o.ids, toks, LLREF_MAX_TOKENS, n_vocab);
        if (n_prompt < 0) {
            fprintf(stderr, "llref: error: bad token id list (ids must be 0..%d)\n", n_vocab - 1);
            goto out;
        }
    } else {
        size_t len = strlen(o.prompt);
        if (len > (size_t)LLREF_MAX_TOKENS * 16) {
            fprintf(stderr, "llref: error: prompt too long\n");
            goto out;
        }
        n_prompt = llama_tokenize(vocab, o.prompt, (int32_t)len, toks, LLREF_MAX_TOKENS,
                                  o.add_bos != 0, o.parse_special != 0);
        if (n_prompt < 0) {
            fprintf(stderr, "llref: error: tokenize failed (%d)\n", n_prompt);
            goto out;
        }
    }
    if (n_prompt == 0) {
        fprintf(stderr, "llref: error: empty prompt\n");
        goto out;
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + o.n_gen + 1);
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx < 512 ? cp.n_ctx : 512;
    cp.n_seq_max = 1;
    cp.n_threads = o.threads;
    cp.n_threads_batch = o.threads;
    cp.no_perf = true;
    cp.flash_attn_type = o.fa < 0 ? LLAMA_FLASH_ATTN_TYPE_AUTO
                       : o.fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = o.kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.type_v = cp.type_k;
    ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "llref: error: cannot create context\n");
        goto out;
    }

    double t0 = now_ms();
    int err = llama_decode(ctx, llama_batch_get_one(toks, n_prompt));
    double t_prompt = now_ms() - t0;
    if (err) {
        fprintf(stderr, "llref: error: prompt decode failed (%d)\n", err);
        goto out;
    }
    const float *lg = llama_get_logits_ith(ctx, -1);
    if (!lg) {
        fprintf(stderr, "llref: error: no logits\n");
        goto out;
    }
    if (o.logits_prompt && write_f32(o.logits_prompt, lg, n_vocab)) {
        fprintf(stderr, "llref: error: cannot write %s\n", o.logits_prompt);
        goto out;
    }

    llama_token *gen = toks + n_prompt;
    int n_done = 0;
    double t1 = now_ms();
    while (n_done < o.n_gen) {
        llama_token next = argmax(lg, n_vocab);
        gen[n_done++] = next;
        if (n_done == o.n_gen || (o.stop_eog && llama_vocab_is_eog(vocab, next)))
            break; /* lg stays = the distribution of the last generated token */
        err = llama_decode(ctx, llama_batch_get_one(&gen[n_done - 1], 1));
        if (err) {
            fprintf(stderr, "llref: error: decode failed at gen %d (%d)\n", n_done, err);
            goto out;
        }
        lg = llama_get_logits_ith(ctx, -1);
        if (!lg) {
            fprintf(stderr, "llref: error: no logits\n");
            goto out;
        }
    }
    double t_gen = now_ms() - t1;

    if (o.logits && write_f32(o.logits, lg, n_vocab)) {
        fprintf(stderr, "llref: error: cannot write %s\n", o.logits);
        goto out;
    }

    if (o.report) {
        rep = fopen(o.report, "w");
        if (!rep) {
            rep = stdout;
            fprintf(stderr, "llref: error: cannot write %s\n", o.report);
            goto out;
        }
    }
    fprintf(rep, "llref 1\nn_vocab %d\nprompt %d", n_vocab, n_prompt);
    for (int i = 0; i < n_prompt; i++)
        fprintf(rep, " %d", toks[i]);
    fprintf(rep, "\ngen %d", n_done);
    for (int i = 0; i < n_done; i++)
        fprintf(rep, " %d", gen[i]);
    /* n_done decode calls were not all made: the last token is only argmax'ed */
    fprintf(rep, "\ntiming prompt_tokens %d prompt_ms %.3f gen_tokens %d gen_ms %.3f\n",
            n_prompt, t_prompt, n_done > 0 ? n_done - 1 : 0, t_gen);
    if (fflush(rep) != 0) {
        fprintf(stderr, "llref: error: write failed\n");
        goto out;
    }
    rc = 0;
out:
    if (rep != stdout && fclose(rep) != 0 && rc == 0) {
        fprintf(stderr, "llref: error: write failed\n");
        rc = 1;
    }
    free(toks);
    if (ctx)
        llama_free(ctx);
    if (model)
        llama_model_free(model);
    llama_backend_free();
    return rc;
}
