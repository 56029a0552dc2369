/*
 * ggml_ref_driver.c — a tiny command-line front end to ggml's own C reference routines, used by
 * scripts/gen_quant_vectors.py to make the K-quant / Q8_K / Q8_1 test vectors and the expected
 * dot products in kernels/tests/data/quants/.
 *
 * This file is ours; it contains no ggml code. It is compiled against an unmodified llama.cpp
 * checkout (for example the one vendored in the `llama-cpp-sys-2` crate in ~/.cargo/registry):
 *
 *   LL=.../llama-cpp-sys-2-0.1.161/llama.cpp
 *   gcc -O2 -std=c11 -I$LL/ggml/include -I$LL/ggml/src -I$LL/ggml/src/ggml-cpu \
 *       ggml_ref_driver.c $LL/ggml/src/ggml-quants.c $LL/ggml/src/ggml-cpu/quants.c -lm -o driver
 *
 * No -march flags: baseline x86-64 has no FMA, so the compiler cannot contract a*b+c, which is
 * the arithmetic our Rust reference reproduces (separate roundings).
 *
 * Commands (all files are raw little-endian arrays):
 *   driver quant   TYPE in.f32 out.bin        quantize_row_TYPE_ref (f16/bf16: ggml's converters)
 *   driver dequant TYPE in.bin out.f32        dequantize_row_TYPE
 *   driver dot     TYPE w.bin ROWS act.bin ACTS K out.f32
 *        out[r*ACTS + a] = ggml_vec_dot_TYPE_<vec_dot_type>_generic(weight row r, activation row a),
 *        the activations already in the vec_dot type (Q8_0 / Q8_1 / Q8_K bytes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>

#include "ggml-quants.h"
#include "ggml-impl.h"
#include "quants.h" /* ggml-cpu/quants.h: the *_generic dot products */

/* ---- the few ggml symbols ggml-quants.c / ggml-cpu/quants.c reference, provided here ---- */
float ggml_table_f32_f16[1 << 16];

void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list ap;
    fprintf(stderr, "ggml_abort %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; (void) ne; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void) type; abort(); }
const char * ggml_type_name(enum ggml_type type) { (void) type; return "?"; }

typedef void (*quant_fn)(const float *, void *, int64_t);
typedef void (*dequant_fn)(const void *, float *, int64_t);
typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

struct format {
    const char * name;
    int block_elems;
    int block_bytes;
    quant_fn quant;
    dequant_fn dequant;
    dot_fn dot;
    int act_block_elems; /* vec_dot type of the activations */
    int act_block_bytes;
};

static void quant_f16(const float * x, void * y, int64_t k) {
    ggml_fp16_t * out = y;
    for (int64_t i = 0; i < k; i++) out[i] = GGML_FP32_TO_FP16(x[i]);
}
static void dequant_f16(const void * x, float * y, int64_t k) {
    const ggml_fp16_t * in = x;
    for (int64_t i = 0; i < k; i++) y[i] = GGML_FP16_TO_FP32(in[i]);
}
static void quant_bf16(const float * x, void * y, int64_t k) {
    ggml_bf16_t * out = y;
    for (int64_t i = 0; i < k; i++) out[i] = GGML_FP32_TO_BF16(x[i]);
}
static void dequant_bf16(const void * x, float * y, int64_t k) {
    const ggml_bf16_t * in = x;
    for (int64_t i = 0; i < k; i++) y[i] = GGML_BF16_TO_FP32(in[i]);
}

#define Q(f) ((quant_fn) (f))
#define DQ(f) ((dequant_fn) (f))
static const struct format formats[] = {
    { "f16",  1,   2,   quant_f16, dequant_f16, NULL, 0, 0 },
    { "bf16", 1,   2,   quant_bf16, dequant_bf16, NULL, 0, 0 },
    { "q4_0", 32,  18,  Q(quantize_row_q4_0_ref), DQ(dequantize_row_q4_0), ggml_vec_dot_q4_0_q8_0_generic, 32, 34 },
    { "q4_1", 32,  20,  Q(quantize_row_q4_1_ref), DQ(dequantize_row_q4_1), ggml_vec_dot_q4_1_q8_1_generic, 32, 36 },
    { "q5_0", 32,  22,  Q(quantize_row_q5_0_ref), DQ(dequantize_row_q5_0), ggml_vec_dot_q5_0_q8_0_generic, 32, 34 },
    { "q5_1", 32,  24,  Q(quantize_row_q5_1_ref), DQ(dequantize_row_q5_1), ggml_vec_dot_q5_1_q8_1_generic, 32, 36 },
    { "q8_0", 32,  34,  Q(quantize_row_q8_0_ref), DQ(dequantize_row_q8_0), ggml_vec_dot_q8_0_q8_0_generic, 32, 34 },
    { "q8_1", 32,  36,  Q(quantize_row_q8_1_ref), NULL, NULL, 0, 0 },
    { "q4_K", 256, 144, Q(quantize_row_q4_K_ref), DQ(dequantize_row_q4_K), ggml_vec_dot_q4_K_q8_K_generic, 256, 292 },
    { "q5_K", 256, 176, Q(quantize_row_q5_K_ref), DQ(dequantize_row_q5_K), ggml_vec_dot_q5_K_q8_K_generic, 256, 292 },
    { "q6_K", 256, 210, Q(quantize_row_q6_K_ref), DQ(dequantize_row_q6_K), ggml_vec_dot_q6_K_q8_K_generic, 256, 292 },
    { "q8_K", 256, 292, Q(quantize_row_q8_K_ref), DQ(dequantize_row_q8_K), NULL, 0, 0 },
};

static void die(const char * msg, const char * arg) {
    fprintf(stderr, "ggml_ref_driver: %s%s\n", msg, arg ? arg : "");
    exit(2);
}

static const struct format * find_format(const char * name) {
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        if (strcmp(formats[i].name, name) == 0) return &formats[i];
    }
    die("unknown type ", name);
    return NULL;
}

static void * read_file(const char * path, size_t * len) {
    FILE * f = fopen(path, "rb");
    if (!f) die("cannot open ", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void * buf = malloc(n > 0 ? (size_t) n : 1);
    if (!buf || fread(buf, 1, (size_t) n, f) != (size_t) n) die("cannot read ", path);
    fclose(f);
    *len = (size_t) n;
    return buf;
}

static void write_file(const char * path, const void * data, size_t len) {
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) die("cannot write ", path);
    fclose(f);
}

int main(int argc, char ** argv) {
    for (int i = 0; i < (1 << 16); i++) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);

    if (argc == 5 && strcmp(argv[1], "quant") == 0) {
        const struct format * fmt = find_format(argv[2]);
        size_t len;
        float * x = read_file(argv[3], &len);
        size_t n = len / sizeof(float);
        if (n % fmt->block_elems) die("input length not a multiple of the block size: ", argv[3]);
        size_t out_len = n / fmt->block_elems * fmt->block_bytes;
        void * y = calloc(out_len, 1);
        fmt->quant(x, y, (int64_t) n);
        write_file(argv[4], y, out_len);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "dequant") == 0) {
        const struct format * fmt = find_format(argv[2]);
        if (!fmt->dequant) die("no dequantize for ", argv[2]);
        size_t len;
        void * x = read_file(argv[3], &len);
        if (len % fmt->block_bytes) die("input length not a multiple of the block bytes: ", argv[3]);
        size_t n = len / fmt->block_bytes * fmt->block_elems;
        float * y = malloc(n * sizeof(float));
        fmt->dequant(x, y, (int64_t) n);
        write_file(argv[4], y, n * sizeof(float));
        return 0;
    }
    if (argc == 9 && strcmp(argv[1], "dot") == 0) {
        const struct format * fmt = find_format(argv[2]);
        if (!fmt->dot) die("no vec_dot for ", argv[2]);
        int rows = atoi(argv[4]), acts = atoi(argv[6]), k = atoi(argv[7]);
        if (rows <= 0 || acts <= 0 || k <= 0 || k % fmt->block_elems) die("bad ROWS/ACTS/K", NULL);
        size_t w_row = (size_t) k / fmt->block_elems * fmt->block_bytes;
        size_t a_row = (size_t) k / fmt->act_block_elems * fmt->act_block_bytes;
        size_t wl, al;
        char * w = read_file(argv[3], &wl);
        char * a = read_file(argv[5], &al);
        if (wl < w_row * rows || al < a_row * acts) die("weight/activation file too short", NULL);
        float * out = malloc(sizeof(float) * rows * acts);
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < acts; j++) {
                fmt->dot(k, &out[r * acts + j], 0, w + r * w_row, 0, a + j * a_row, 0, 1);
            }
        }
        write_file(argv[8], out, sizeof(float) * rows * acts);
        return 0;
    }
    fprintf(stderr, "usage: ggml_ref_driver quant|dequant TYPE IN OUT | dot TYPE W ROWS ACT ACTS K OUT\n");
    return 2;
}
