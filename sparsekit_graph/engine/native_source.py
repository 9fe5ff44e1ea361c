"""The C source of the engine's native loops (``engine/native.py`` builds and loads it): weighted
column and row sums of squares, ``M`` sums, the two-factor write, and ``sk_program``, a fused
Euclidean call's table of reads, factor rows and writes run in phases over pthreads
(``engine/native_plan.py`` compiles the table)."""

from __future__ import annotations

__all__ = ["SOURCE"]

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
/* acc[c] += v[r] x[r, c]^2 over rows r (v NULL: ones); rows at stride ld, columns contiguous */
void sk_wcols(const float* restrict x, int64_t R, int64_t C, int64_t ld, const float* v, float* restrict acc) {
  for (int64_t r = 0; r < R; ++r) {
    const float w = v ? v[r] : 1.0f;
    const float* restrict row = x + r * ld;
    for (int64_t c = 0; c < C; ++c) acc[c] += w * row[c] * row[c];
  }
}
/* out[r] = sum_c v[c] x[r, c]^2 */
void sk_wrows(const float* restrict x, int64_t R, int64_t C, int64_t ld, const float* restrict v, float* out) {
  for (int64_t r = 0; r < R; ++r) {
    const float* restrict row = x + r * ld;
    float s[16] = {0};
    int64_t c = 0;
    for (; c + 16 <= C; c += 16)
      for (int j = 0; j < 16; ++j) s[j] += v[c + j] * row[c + j] * row[c + j];
    float t = 0;
    for (int j = 0; j < 16; ++j) t += s[j];
    for (; c < C; ++c) t += v[c] * row[c] * row[c];
    out[r] = t;
  }
}
/* m[n] = sum_k x[n, k]^2 over a contiguous (N, K) */
void sk_msum(const float* restrict x, int64_t N, int64_t K, float* restrict m) {
  if (K == 9) {
    int64_t n = 0;
#ifdef __AVX2__
    for (; n + 8 <= N; n += 8) {  /* 8 runs: 8 loads of their first 8 squares, summed by a transposing tree */
      const float* p = x + n * 9;
      __m256 v[8];
      for (int j = 0; j < 8; ++j) {
        const __m256 a = _mm256_loadu_ps(p + 9 * j);
        v[j] = _mm256_mul_ps(a, a);
      }
      const __m256 q0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
      const __m256 q1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
      __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
      const __m256 last = _mm256_set_ps(p[71], p[62], p[53], p[44], p[35], p[26], p[17], p[8]);
      s = _mm256_add_ps(s, _mm256_mul_ps(last, last));
      _mm256_storeu_ps(m + n, s);
    }
#endif
    for (; n < N; ++n) {
      const float* p = x + n * 9;
      m[n] = p[0] * p[0] + p[1] * p[1] + p[2] * p[2] + p[3] * p[3] + p[4] * p[4] + p[5] * p[5] + p[6] * p[6] +
             p[7] * p[7] + p[8] * p[8];
    }
    return;
  }
  for (int64_t n = 0; n < N; ++n) {
    float s = 0;
    for (int64_t k = 0; k < K; ++k) s += x[n * K + k] * x[n * K + k];
    m[n] = s;
  }
}
/* x[r, c] = (x[r, c] * f[r]) * g[c] (rows_first) or (x[r, c] * g[c]) * f[r]: the eager order */
void sk_scale2(float* restrict x, int64_t R, int64_t C, int64_t ld, const float* f, const float* restrict g, int rows_first) {
  for (int64_t r = 0; r < R; ++r) {
    float* restrict row = x + r * ld;
    const float a = f[r];
    if (rows_first) for (int64_t c = 0; c < C; ++c) row[c] = (row[c] * a) * g[c];
    else for (int64_t c = 0; c < C; ++c) row[c] = (row[c] * g[c]) * a;
  }
}
static float sq_free_sum(const float* restrict p, int64_t n) {
  float acc[16] = {0}, t = 0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int q = 0; q < 16; ++q) acc[q] += p[j + q];
  for (int q = 0; q < 16; ++q) t += acc[q];
  for (; j < n; ++j) t += p[j];
  return t;
}
/* Tables: one row of W int64 per entry, so a whole call's reads (or writes) are one C call:
   x, kind, n0, n1, n2, s0, s1, s2, lo, hi, f (or out), g (or M), flag. */
enum { W = 13 };
static float sq_run(const float* restrict p, int64_t n, int64_t s) {
  float acc[16] = {0}, t = 0;
  int64_t j = 0;
  if (s == 1)
    for (; j + 16 <= n; j += 16)
      for (int q = 0; q < 16; ++q) acc[q] += p[j + q] * p[j + q];
  for (int q = 0; q < 16; ++q) t += acc[q];
  for (; j < n; ++j) t += p[j * s] * p[j * s];
  return t;
}
/* kinds, each over its outputs lo..hi (a range's sums are the whole call's bits): 0 rows of (1, R, P):
   out[r] = sum_p x^2; 1 columns of (A, R, P): out[r] = sum_{a,p} x^2; 2 M of a contiguous (O, I, K), rows
   lo..hi: g[o I + i] = sum_k x^2; 3 sums of M (g, (O, I)): flag 0 out[o] = sum_i M, flag 1 out[i] = sum_o M;
   4 and 5: a contiguous (O, I) x, squared (flag 1) or not (M, flag 0), weighted by g: 4 out[o] = sum_i g[i] x,
   5 out[i] = sum_o g[o] x */
void sk_reads(const int64_t* t, int64_t n) {
  for (int64_t e = 0; e < n; ++e, t += W) {
    const float* x = (const float*)t[0];
    const int64_t A = t[2], R = t[3], P = t[4], s0 = t[5], s1 = t[6], s2 = t[7], lo = t[8], hi = t[9];
    float* out = (float*)t[10];
    float* m = (float*)t[11];
    if (t[1] == 0) {
      for (int64_t r = lo; r < hi; ++r) out[r] = sq_run(x + r * s1, P, s2);
    } else if (t[1] == 1) {
      for (int64_t r = lo; r < hi; ++r) out[r] = 0;
      for (int64_t a = 0; a < A; ++a) {
        const float* restrict row = x + a * s0;
        if (P == 1 && s1 == 1) for (int64_t r = lo; r < hi; ++r) out[r] += row[r] * row[r];
        else for (int64_t r = lo; r < hi; ++r) out[r] += sq_run(row + r * s1, P, s2);
      }
    } else if (t[1] == 2) {
      sk_msum(x + lo * R * P, (hi - lo) * R, P, m + lo * R);
    } else if (t[1] == 4 || t[1] == 5) {  /* a later use of (O, I) = x (flag 1: squared) or M (flag 0), weighted by g */
      const float* v = (const float*)t[11];
      if (t[1] == 4) {
        for (int64_t o = lo; o < hi; ++o) {
          const float* restrict row = x + o * R;
          float acc[16] = {0}, s = 0;
          int64_t i = 0;
          if (t[12]) for (; i + 16 <= R; i += 16) for (int q = 0; q < 16; ++q) acc[q] += v[i + q] * row[i + q] * row[i + q];
          else for (; i + 16 <= R; i += 16) for (int q = 0; q < 16; ++q) acc[q] += v[i + q] * row[i + q];
          for (int q = 0; q < 16; ++q) s += acc[q];
          for (; i < R; ++i) s += t[12] ? v[i] * row[i] * row[i] : v[i] * row[i];
          out[o] = s;
        }
      } else {
        for (int64_t i = lo; i < hi; ++i) out[i] = 0;
        for (int64_t o = 0; o < A; ++o) {
          const float* restrict row = x + o * R;
          const float w = v[o];
          if (t[12]) for (int64_t i = lo; i < hi; ++i) out[i] += w * row[i] * row[i];
          else for (int64_t i = lo; i < hi; ++i) out[i] += w * row[i];
        }
      }
    } else if (t[1] == 3) {
      if (t[12] == 0) for (int64_t o = lo; o < hi; ++o) out[o] = sq_free_sum(m + o * R, R);
      else {
        for (int64_t i = lo; i < hi; ++i) out[i] = 0;
        for (int64_t o = 0; o < A; ++o) for (int64_t i = lo; i < hi; ++i) out[i] += m[o * R + i];
      }
    }
  }
}
/* kinds: 0 one use (A, R, P) strided, rows lo..hi: x *= f[r]; 1 two uses, a contiguous (O, I, K), rows
   lo..hi: x[o, i, k] = (x f[o]) g[i] (flag 1: rows first) or (x g[i]) f[o], the eager order */
void sk_writes(const int64_t* t, int64_t n) {
  for (int64_t e = 0; e < n; ++e, t += W) {
    float* x = (float*)t[0];
    const int64_t A = t[2], R = t[3], P = t[4], s0 = t[5], s1 = t[6], s2 = t[7], lo = t[8], hi = t[9];
    const float* f = (const float*)t[10];
    const float* g = (const float*)t[11];
    if (t[1] == 0 && P == 1) {  /* columns of a matrix (a Linear's inputs): one factor per element of a row */
      for (int64_t a = 0; a < A; ++a) {
        float* restrict p = x + a * s0;
        if (s1 == 1) for (int64_t r = lo; r < hi; ++r) p[r] *= f[r];
        else for (int64_t r = lo; r < hi; ++r) p[r * s1] *= f[r];
      }
    } else if (t[1] == 0) {
      for (int64_t a = 0; a < A; ++a)
        for (int64_t r = lo; r < hi; ++r) {
          float* restrict p = x + a * s0 + r * s1;
          const float v = f[r];
          if (s2 == 1) for (int64_t j = 0; j < P; ++j) p[j] *= v;
          else for (int64_t j = 0; j < P; ++j) p[j * s2] *= v;
        }
    } else if (P == 1) {
      sk_scale2(x + lo * R, hi - lo, R, R, f + lo, g, (int)t[12]);
    } else {
      float* cols = (float*)malloc(sizeof(float) * R * P);  /* the column factors spelled out over the run */
      if (!cols) {  /* out of memory: the same products, one run at a time */
        for (int64_t o = lo; o < hi; ++o) for (int64_t i = 0; i < R; ++i) for (int64_t k = 0; k < P; ++k) {
          float* v = x + (o * R + i) * P + k;
          *v = t[12] ? (*v * f[o]) * g[i] : (*v * g[i]) * f[o];
        }
        continue;
      }
      for (int64_t i = 0; i < R; ++i) for (int64_t k = 0; k < P; ++k) cols[i * P + k] = g[i];
      sk_scale2(x + lo * R * P, hi - lo, R * P, R * P, f + lo, cols, (int)t[12]);
      free(cols);
    }
  }
}
/* A wave's shrink factors (engine/wave_plan.py's factors): parts[e] (float32, lens[e] long) add to the
   wave's blocks offs[e].. in float64, in order; then scale = max(0, 1 - tau / max(norm, tiny)), zero
   where norm <= tau + floor (floor > 0), its float32 value and square, and the blocks it zeroed. */
void sk_factors(const int64_t* parts, const int64_t* offs, const int64_t* lens, int64_t n_parts, const void* tau,
                int tau64, int64_t n, double floor, double tiny, double* sums, float* single, float* square,
                unsigned char* killed) {
  for (int64_t b = 0; b < n; ++b) sums[b] = 0.0;
  for (int64_t e = 0; e < n_parts; ++e) {
    const float* p = (const float*)parts[e];
    double* s = sums + offs[e];
    for (int64_t r = 0; r < lens[e]; ++r) s[r] += (double)p[r];
  }
  for (int64_t b = 0; b < n; ++b) {
    const double norm = sqrt(sums[b]);
    const double t = tau64 ? ((const double*)tau)[b] : (double)((const float*)tau)[b];
    double scale = 1.0 - t / (isnan(norm) || norm > tiny ? norm : tiny); /* a NaN stays NaN, as torch's clamp_min */
    if (scale < 0.0) scale = 0.0;
    if (floor > 0) {
      const double edge = tau64 ? t + floor : (double)(((const float*)tau)[b] + (float)floor);
      if (!(norm > edge)) scale = 0.0;
    }
    single[b] = (float)scale;
    square[b] = single[b] * single[b];
    killed[b] = scale == 0.0 && sums[b] > 0.0;
  }
}
/* A whole call as one program (engine/native_plan.py): phases of table rows (reads, writes, or a wave's
   factors), each phase's rows taken one at a time by whichever thread is free, a barrier between phases.
   A factors row: parts, offs, lens, n_parts, tau base, its first element, n, sums, single, square, killed. */
enum { PH_READS = 0, PH_WRITES = 1, PH_FACTORS = 2 };
typedef struct {
  const int64_t* rows;
  const int64_t* phases; /* per phase: first row, rows, kind */
  int64_t n_phases, threads;
  int tau64;
  double floor, tiny;
  _Atomic int64_t* next; /* per phase: the next row to take */
  _Atomic int64_t arrived, generation, started;
} program_t;
static void wait_all(program_t* g) {
  const int64_t gen = atomic_load(&g->generation);
  if (atomic_fetch_add(&g->arrived, 1) == g->threads - 1) {
    atomic_store(&g->arrived, 0);
    atomic_fetch_add(&g->generation, 1);
    return;
  }
  for (int64_t spin = 0; atomic_load(&g->generation) == gen; ++spin)
    if (spin > 2048) sched_yield(); /* a descheduled partner: give the core back */
}
static void factors_row(const program_t* g, const int64_t* t) {
  const void* tau = g->tau64 ? (const void*)((const double*)t[4] + t[5]) : (const void*)((const float*)t[4] + t[5]);
  sk_factors((const int64_t*)t[0], (const int64_t*)t[1], (const int64_t*)t[2], t[3], tau, g->tau64, t[6], g->floor,
             g->tiny, (double*)t[7], (float*)t[8], (float*)t[9], (unsigned char*)t[10]);
}
static void* run_program(void* arg) {
  program_t* g = (program_t*)arg;
  while (atomic_load(&g->started) == 0) sched_yield();
  for (int64_t p = 0; p < g->n_phases; ++p) {
    const int64_t first = g->phases[3 * p], count = g->phases[3 * p + 1], kind = g->phases[3 * p + 2];
    for (int64_t e; (e = atomic_fetch_add(&g->next[p], 1)) < count;) {
      const int64_t* row = g->rows + (first + e) * W;
      if (kind == PH_READS) sk_reads(row, 1);
      else if (kind == PH_WRITES) sk_writes(row, 1);
      else factors_row(g, row);
    }
    if (g->threads > 1) wait_all(g);
  }
  return NULL;
}
/* Runs the program on the calling thread and up to threads - 1 more; returns the threads it ran on
   (0: out of memory, nothing ran). */
int64_t sk_program(const int64_t* rows, const int64_t* phases, int64_t n_phases, int64_t threads, int tau64,
                   double floor, double tiny) {
  program_t g = {rows, phases, n_phases, 1, tau64, floor, tiny, NULL};
  g.next = (_Atomic int64_t*)calloc(n_phases > 0 ? n_phases : 1, sizeof(_Atomic int64_t));
  pthread_t* helpers = (pthread_t*)calloc(threads > 1 ? threads - 1 : 1, sizeof(pthread_t));
  if (!g.next || !helpers) {
    free((void*)g.next);
    free(helpers);
    return 0;
  }
  atomic_init(&g.arrived, 0);
  atomic_init(&g.generation, 0);
  atomic_init(&g.started, 0);
  int64_t made = 0;
  for (; made + 1 < threads; ++made)
    if (pthread_create(&helpers[made], NULL, run_program, &g) != 0) break; /* fewer threads: the same rows */
  g.threads = made + 1;
  atomic_store(&g.started, 1);
  run_program(&g);
  for (int64_t e = 0; e < made; ++e) pthread_join(helpers[e], NULL);
  free((void*)g.next);
  free(helpers);
  return made + 1;
}
"""
