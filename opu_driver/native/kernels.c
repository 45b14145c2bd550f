/* Hot loops of the OPU data path, built by cffi (opu_driver/native/build.py).
 *
 * Every function trusts its arguments: the Python wrappers in opu_driver/native/__init__.py check dtypes,
 * shapes, index ranges and byte counts before calling, so nothing here can read or write out of bounds.
 * Float results are computed in float32 in the order the numpy fallback uses (built with -ffp-contract=off),
 * so both paths give bit-identical results.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* Set (or leave) mirrors [first, first + count) of one packed MSB-first frame: v is 0xFF to set, 0 to leave.
 * Partial bytes at the ends take a bit mask; the bytes in between are filled whole. */
static inline void fill_run(uint8_t *frame, uint64_t first, uint64_t count, uint8_t v)
{
    uint64_t last = first + count - 1;
    uint64_t b0 = first >> 3, b1 = last >> 3;
    uint8_t head = (uint8_t)(0xFFu >> (first & 7));          /* bits first%8 .. 7 from the MSB */
    uint8_t tail = (uint8_t)(0xFFu << (7 - (last & 7)));     /* bits 0 .. last%8 from the MSB */
    if (b0 == b1) {
        frame[b0] |= (uint8_t)(head & tail & v);
        return;
    }
    frame[b0] |= (uint8_t)(head & v);
    frame[b1] |= (uint8_t)(tail & v);
    /* Runs do not overlap and the frame starts zeroed, so the whole bytes inside a run are stored, not OR-ed. */
    uint8_t *p = frame + b0 + 1;
    size_t inner = (size_t)(b1 - b0 - 1);
    if (inner >= 8) {
        if (inner > 64) {
            memset(p, v, inner);
        } else {
            uint64_t v64 = 0x0101010101010101ull * v;
            size_t j = 0;
            for (; j + 8 <= inner; j += 8) memcpy(p + j, &v64, 8);
            memcpy(p + inner - 8, &v64, 8);  /* the last, possibly overlapping, 8 bytes */
        }
    } else {
        for (size_t j = 0; j < inner; ++j) p[j] = v;
    }
}

static void opu_copy_stretches(uint8_t *frame, const uint32_t *ops, uint64_t n_ops);

/* Packed mirror frames: out (n_frames, frame_bytes) from bits (n_frames, n_features) through runs (M, 3) of
 * (feature, first_mirror, n_mirrors), then the copy ops (K, 3) of opu_copy_stretches. Runs must not overlap
 * and must lie inside the frame. */
void opu_encode_frames(const uint8_t *bits, uint64_t n_frames, uint64_t n_features,
                       const uint32_t *runs, uint64_t n_runs, const uint32_t *ops, uint64_t n_ops,
                       uint64_t frame_bytes, uint8_t *out)
{
    for (uint64_t i = 0; i < n_frames; ++i) {
        const uint8_t *row = bits + i * n_features;
        uint8_t *frame = out + i * frame_bytes;
        memset(frame, 0, (size_t)frame_bytes);
        for (uint64_t r = 0; r < n_runs; ++r) {
            const uint32_t *run = runs + 3 * r;
            uint32_t count = run[2];
            /* Branch-free on the feature value: random features would defeat the branch predictor. */
            uint8_t v = (uint8_t)(0u - (uint8_t)(row[run[0]] != 0));
            if (count) fill_run(frame, run[1], count, v);
        }
        if (n_ops) opu_copy_stretches(frame, ops, n_ops);
    }
}

/* Copy ops that repeat an already drawn stretch of mirrors: ops (K, 3) of (dst_first, src_first, n_mirrors)
 * with dst_first - src_first a positive multiple of 8 (so bytes copy whole), applied in order after the runs.
 * Mirror dst_first + i takes the value of mirror src_first + i as it is when reached, so a stretch that
 * overlaps its source repeats it; the destination's partial end bytes keep their bits outside the stretch. */
static void opu_copy_stretches(uint8_t *frame, const uint32_t *ops, uint64_t n_ops)
{
    for (uint64_t k = 0; k < n_ops; ++k) {
        uint64_t dst = ops[3 * k], src = ops[3 * k + 1], count = ops[3 * k + 2];
        if (!count) continue;
        uint64_t last = dst + count - 1;
        uint64_t b0 = dst >> 3, b1 = last >> 3, shift = (dst - src) >> 3;
        uint8_t head = (uint8_t)(0xFFu >> (dst & 7));
        uint8_t tail = (uint8_t)(0xFFu << (7 - (last & 7)));
        if (b0 == b1) {
            uint8_t m = head & tail;
            frame[b0] = (uint8_t)((frame[b0] & ~m) | (frame[b0 - shift] & m));
            continue;
        }
        frame[b0] = (uint8_t)((frame[b0] & ~head) | (frame[b0 - shift] & head));
        /* Forward, in pieces of at most `shift` bytes: a stretch longer than its shift repeats the pattern. */
        for (uint64_t pos = b0 + 1; pos < b1;) {
            uint64_t piece = b1 - pos < shift ? b1 - pos : shift;
            memcpy(frame + pos, frame + pos - shift, (size_t)piece);
            pos += piece;
        }
        frame[b1] = (uint8_t)((frame[b1] & ~tail) | (frame[b1 - shift] & tail));
    }
}

/* out (n, m) = ((f0 - f1) - (f2 - f3)) * scale for frames (n, 4, m). */
void opu_combine_four(const float *frames, uint64_t n, uint64_t m, const float *scale, float *out)
{
    for (uint64_t i = 0; i < n; ++i) {
        const float *f0 = frames + 4 * m * i, *f1 = f0 + m, *f2 = f1 + m, *f3 = f2 + m;
        float *o = out + m * i;
        for (uint64_t j = 0; j < m; ++j) {
            float a = f0[j] - f1[j];
            float c = f2[j] - f3[j];
            float d = a - c;
            o[j] = d * scale[j];
        }
    }
}

/* out (n, m) = (f0 - f1) * scale for frames (n, 2, m). */
void opu_combine_two(const float *frames, uint64_t n, uint64_t m, const float *scale, float *out)
{
    for (uint64_t i = 0; i < n; ++i) {
        const float *f0 = frames + 2 * m * i, *f1 = f0 + m;
        float *o = out + m * i;
        for (uint64_t j = 0; j < m; ++j) {
            float a = f0[j] - f1[j];
            o[j] = a * scale[j];
        }
    }
}
