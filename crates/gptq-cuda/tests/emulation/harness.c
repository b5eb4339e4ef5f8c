/* Runs the column-loop kernel of src/kernels.cu on the host, one row after the other, so that
 * tests/emulation.rs can compare it bit for bit with the CPU backend without a GPU.
 *
 * harness INPUT OUTPUT
 *
 * INPUT (little-endian): 12 int32 (rows, columns, mode, group_size, candidates, max_code,
 * symmetric, clip_steps, clip_grid, blocks, slots, min_zero), 2 float32 (shrink_step, clip_norm), `blocks`
 * pairs of int32 (start, end), then weights [rows][columns] f32 row-major, upper
 * [columns][columns] f32, importance [columns] f32, slot_of_column [columns] u32, scales
 * [slots][rows] f32, zeros [slots][rows] u16.
 * OUTPUT: codes [rows][columns] u8 row-major, scales [slots][rows] f32, zeros [slots][rows] u16.
 *
 * harness --functions INPUT OUTPUT
 *
 * INPUT: int32 count, then per case int32 (n, max_code, symmetric, clip_steps, clip_grid,
 * candidates, zero, min_zero), float32 (clip_norm, shrink_step, scale), values [n] f32, importance [n] f32.
 * OUTPUT per case: weighted_error(values, importance, (scale, zero)) f32, then the fit
 * (plain, or searched when candidates > 1) as scale f32 and zero u32.
 *
 * Between blocks it applies the lazy update W[:, end:] -= E · U[block, end:] with plain loops;
 * the tests use it with a block-diagonal U, where that update changes nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/kernels.cu"

static void *read_exact(FILE *f, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "harness: short input\n");
        exit(2);
    }
    return p;
}

static int functions(const char *input, const char *output) {
    FILE *in = fopen(input, "rb");
    FILE *out = fopen(output, "wb");
    if (!in || !out) {
        perror("harness");
        return 2;
    }
    int *count = read_exact(in, sizeof(int));
    for (int c = 0; c < *count; ++c) {
        int *h = read_exact(in, 8 * sizeof(int));
        float *hf = read_exact(in, 3 * sizeof(float));
        int n = h[0];
        float *values = read_exact(in, (size_t)n * sizeof(float));
        float *importance = read_exact(in, (size_t)n * sizeof(float));
        gptq_grid g;
        g.max_code = h[1];
        g.symmetric = h[2];
        g.min_zero = h[7];
        g.clip_steps = h[3];
        g.clip_grid = (unsigned int)h[4];
        g.clip_norm = hf[0];
        gptq_values v;
        v.a = values;
        v.na = n;
        v.b = values;
        v.nb = 0;
        v.stride = 1;
        gptq_params p;
        p.scale = hf[2];
        p.zero = (unsigned int)h[6];
        float error = gptq_weighted_error(&v, importance, p, (float)g.max_code);
        gptq_params fitted = gptq_fit(&g, &v, importance, (unsigned int)h[5], hf[1]);
        fwrite(&error, sizeof(float), 1, out);
        fwrite(&fitted.scale, sizeof(float), 1, out);
        fwrite(&fitted.zero, sizeof(unsigned int), 1, out);
        free(h);
        free(hf);
        free(values);
        free(importance);
    }
    fclose(in);
    fclose(out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--functions") == 0) return functions(argv[2], argv[3]);
    if (argc != 3) {
        fprintf(stderr, "usage: harness INPUT OUTPUT\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 2;
    }
    int *h = read_exact(in, 12 * sizeof(int));
    float *hf = read_exact(in, 2 * sizeof(float));
    int rows = h[0], columns = h[1], nblocks = h[9], slots = h[10];
    int *blocks = read_exact(in, (size_t)nblocks * 2 * sizeof(int));
    size_t rc = (size_t)rows * columns;
    float *weights = read_exact(in, rc * sizeof(float));
    float *upper = read_exact(in, (size_t)columns * columns * sizeof(float));
    float *importance = read_exact(in, (size_t)columns * sizeof(float));
    unsigned int *slot_of_column = read_exact(in, (size_t)columns * sizeof(unsigned int));
    float *scales = read_exact(in, (size_t)slots * rows * sizeof(float));
    unsigned short *zeros = read_exact(in, (size_t)slots * rows * sizeof(unsigned short));
    fclose(in);

    float *w = malloc(rc * sizeof(float));
    unsigned char *codes = calloc(rc, 1);
    float *errors = malloc(rc * sizeof(float));
    float *snapshot = malloc(rc * sizeof(float));
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < columns; ++j) w[(size_t)j * rows + r] = weights[(size_t)r * columns + j];

    gptq_block b;
    b.w = w;
    b.upper = upper;
    b.importance = importance;
    b.codes = codes;
    b.errors = errors;
    b.scales = scales;
    b.zeros = zeros;
    b.slot_of_column = slot_of_column;
    b.snapshot = snapshot;
    b.rows = rows;
    b.columns = columns;
    b.mode = h[2];
    b.group_size = h[3];
    b.candidates = (unsigned int)h[4];
    b.shrink_step = hf[0];
    b.grid.max_code = h[5];
    b.grid.symmetric = h[6];
    b.grid.min_zero = h[11];
    b.grid.clip_steps = h[7];
    b.grid.clip_grid = (unsigned int)h[8];
    b.grid.clip_norm = hf[1];
    for (int k = 0; k < nblocks; ++k) {
        int start = blocks[2 * k], end = blocks[2 * k + 1];
        b.start = start;
        b.end = end;
        if (b.mode == GPTQ_DYNAMIC_BLOCK_START)
            memcpy(snapshot, w + (size_t)start * rows, (size_t)(end - start) * rows * sizeof(float));
        for (int r = 0; r < rows; ++r) gptq_row(&b, r);
        for (int j = end; j < columns; ++j)
            for (int r = 0; r < rows; ++r) {
                float acc = 0.0f;
                for (int i = start; i < end; ++i)
                    acc += errors[(size_t)(i - start) * rows + r] * upper[(size_t)i * columns + j];
                w[(size_t)j * rows + r] -= acc;
            }
    }

    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 2;
    }
    unsigned char *row_major = malloc(rc ? rc : 1);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < columns; ++j) row_major[(size_t)r * columns + j] = codes[(size_t)j * rows + r];
    fwrite(row_major, 1, rc, out);
    fwrite(scales, sizeof(float), (size_t)slots * rows, out);
    fwrite(zeros, sizeof(unsigned short), (size_t)slots * rows, out);
    fclose(out);
    return 0;
}
