/* tokenizer.c: byte-level, GPT-2 BPE and Megatron's null tokenizer (tokenizer.h). */
#include "tokenizer.h"
#include "json.h"
#include "util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "unicode_tables.h"

/* A string -> integer map, open addressing (FNV-1a), for the vocabulary and the merges' ranks. */
struct strmap {
    char **keys;
    int64_t *vals;
    size_t cap, n;
};

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int64_t strmap_get(const struct strmap *m, const char *s, size_t n)
{
    if (!m->cap)
        return -1;
    for (size_t i = hash(s, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i])
            return -1;
        if (strlen(m->keys[i]) == n && !memcmp(m->keys[i], s, n))
            return m->vals[i];
    }
}

/* s (copied) -> v; a key already there takes the new value, as Python's dict (and json.load) keep the last. */
static void strmap_put(struct strmap *m, const char *s, size_t n, int64_t v)
{
    if (2 * (m->n + 1) > m->cap) {
        struct strmap g = {.cap = m->cap ? 2 * m->cap : 1024};
        g.keys = wf_calloc(g.cap, sizeof *g.keys), g.vals = wf_calloc(g.cap, sizeof *g.vals);
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i]) {
                size_t j = hash(m->keys[i], strlen(m->keys[i])) & (g.cap - 1);
                while (g.keys[j])
                    j = (j + 1) & (g.cap - 1);
                g.keys[j] = m->keys[i], g.vals[j] = m->vals[i], g.n++;
            }
        free(m->keys), free(m->vals);
        *m = g;
    }
    size_t i = hash(s, n) & (m->cap - 1);
    while (m->keys[i] && !(strlen(m->keys[i]) == n && !memcmp(m->keys[i], s, n)))
        i = (i + 1) & (m->cap - 1);
    if (!m->keys[i]) {
        m->keys[i] = wf_calloc(n + 1, 1);
        memcpy(m->keys[i], s, n);
        m->n++;
    }
    m->vals[i] = v;
}

static void strmap_free(struct strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys), free(m->vals);
}

struct tokenizer {
    enum tokenizer_type type;
    int64_t vocab, eod;
    struct strmap ids;   /* GPT2_BPE: a token (GPT-2's characters, UTF-8) -> its id */
    struct strmap ranks; /* "first second" -> the merge's rank */
    struct strmap cache; /* a piece (its bytes) -> where its ids are in cached: start << 16 | count (encoder.py's cache) */
    struct tokenizer_ids cached;
    char byte_char[256][3]; /* GPT-2's character for each byte, UTF-8 (2 bytes at most) */
};

int64_t tokenizer_vocab(const struct tokenizer *t) { return t->vocab; }
int64_t tokenizer_eod(const struct tokenizer *t) { return t->eod; }

/* GPT-2's bytes_to_unicode: the printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ')
 * stand for themselves, the others for U+0100 on, in byte order. */
static void byte_chars(struct tokenizer *t)
{
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        int cp = printable ? b : next++;
        char *s = t->byte_char[b];
        if (cp < 0x80)
            s[0] = (char)cp, s[1] = 0;
        else
            s[0] = (char)(0xc0 | cp >> 6), s[1] = (char)(0x80 | (cp & 0x3f)), s[2] = 0;
    }
}

static int load_bpe(struct tokenizer *t, const char *vocab_file, const char *merge_file, struct diag *d)
{
    if (!vocab_file || !merge_file) {
        diag_error(d, NULL, 0, "--tokenizer-type GPT2BPETokenizer needs --vocab-file (vocab.json) and --merge-file (merges.txt)");
        return -1;
    }
    size_t len;
    char *text = wf_read_file(vocab_file, (size_t)1 << 30, &len), err[160];
    if (!text) {
        diag_error(d, vocab_file, 0, "cannot read the vocabulary (%s)", strerror(errno));
        return -1;
    }
    struct json_value *v = json_parse(text, len, err, sizeof err);
    free(text);
    if (!v || v->type != JSON_OBJECT) {
        diag_error(d, vocab_file, 0, "%s", v ? "not a vocabulary: expected a JSON object of token: id" : err);
        json_free(v);
        return -1;
    }
    for (int i = 0; i < v->n; i++) {
        const struct json_value *id = &v->items[i];
        if (id->type != JSON_NUMBER || !id->is_int || id->integer < 0) {
            diag_error(d, vocab_file, 0, "token \"%s\": its id is not an integer at least 0", v->keys[i]);
            json_free(v);
            return -1;
        }
        strmap_put(&t->ids, v->keys[i], strlen(v->keys[i]), id->integer);
    }
    json_free(v);
    t->vocab = (int64_t)t->ids.n; /* Megatron: len(encoder) */
    t->eod = strmap_get(&t->ids, "<|endoftext|>", 13);
    for (size_t i = 0; i < t->ids.cap; i++)
        if (t->ids.keys[i] && t->ids.vals[i] >= t->vocab) {
            diag_error(d, vocab_file, 0, "token \"%s\" has id %lld, past the vocabulary's %lld entries", t->ids.keys[i],
                       (long long)t->ids.vals[i], (long long)t->vocab);
            return -1;
        }
    FILE *f = fopen(merge_file, "r");
    if (!f) {
        diag_error(d, merge_file, 0, "cannot read the merges (%s)", strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int64_t rank = 0;
    int rc = 0;
    for (int lineno = 1; (n = getline(&line, &cap, f)) >= 0; lineno++) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0 || (lineno == 1 && !strncmp(line, "#version", 8)))
            continue;
        char *space = strchr(line, ' ');
        if (!space || space == line || !space[1] || strchr(space + 1, ' ')) {
            diag_error(d, merge_file, lineno, "expected a merge: two tokens and one space between them");
            rc = -1;
            break;
        }
        if (strmap_get(&t->ranks, line, (size_t)n) < 0) /* a pair's first rank counts */
            strmap_put(&t->ranks, line, (size_t)n, rank);
        rank++;
    }
    free(line);
    fclose(f);
    return rc;
}

struct tokenizer *tokenizer_open(enum tokenizer_type type, const char *vocab_file, const char *merge_file, int64_t null_vocab,
                                 struct diag *d)
{
    struct tokenizer *t = wf_calloc(1, sizeof *t);
    t->type = type;
    byte_chars(t);
    if (type == TOKENIZER_BYTE_LEVEL)
        t->vocab = 257, t->eod = 256;
    else if (type == TOKENIZER_NULL)
        t->vocab = null_vocab + 1, t->eod = null_vocab;
    else if (load_bpe(t, vocab_file, merge_file, d)) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

void tokenizer_free(struct tokenizer *t)
{
    if (!t)
        return;
    strmap_free(&t->ids);
    strmap_free(&t->ranks);
    strmap_free(&t->cache);
    free(t->cached.v);
    free(t);
}

static void push(struct tokenizer_ids *ids, int64_t v)
{
    WF_GROW(ids->v, ids->n, ids->cap);
    ids->v[ids->n++] = v;
}

static bool in(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp > r[mid][1])
            lo = mid + 1;
        else if (cp < r[mid][0])
            hi = mid;
        else
            return true;
    }
    return false;
}

enum { CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER };

/* The code point at s[i] and its length in bytes (a byte that starts no
 * valid UTF-8 sequence: itself, one byte, of no class but OTHER). */
static uint32_t decode(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    unsigned c = s[i];
    int k = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
    uint32_t cp = k == 0 ? c : k == 1 ? c & 0x1f : k == 2 ? c & 0x0f : c & 0x07;
    for (int j = 1; k > 0 && j <= k; j++) {
        if (i + (size_t)j >= n || (s[i + (size_t)j] & 0xc0) != 0x80) {
            k = -1;
            break;
        }
        cp = cp << 6 | (s[i + (size_t)j] & 0x3f);
    }
    if (k < 0) {
        *len = 1;
        return 0xfffffffu; /* in no class */
    }
    *len = (size_t)k + 1;
    return cp;
}

static int class_of(uint32_t cp)
{
    if (in(unicode_letter, WF_COUNT(unicode_letter), cp))
        return CLASS_LETTER;
    if (in(unicode_number, WF_COUNT(unicode_number), cp))
        return CLASS_NUMBER;
    return in(unicode_space, WF_COUNT(unicode_space), cp) ? CLASS_SPACE : CLASS_OTHER;
}

/* The end of the run of code points from i of class `want` (negate_all: of none of letter, number, space). */
static size_t run(const unsigned char *s, size_t n, size_t i, int want, bool negate_all)
{
    while (i < n) {
        size_t len;
        int c = class_of(decode(s, n, i, &len));
        if (negate_all ? c != CLASS_OTHER : c != want)
            break;
        i += len;
    }
    return i;
}

/* The length of GPT-2's pattern's match at s[i] (i < n): its alternatives in order. */
static size_t gpt2_piece(const unsigned char *s, size_t n, size_t i)
{
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; s[i] == '\'' && k < WF_COUNT(contractions); k++) {
        size_t l = strlen(contractions[k]);
        if (i + l <= n && !memcmp(s + i, contractions[k], l))
            return l;
    }
    size_t len, at = i + (s[i] == ' '); /* " ?": the space, where what follows it matches */
    int c = at < n ? class_of(decode(s, n, at, &len)) : -1;
    if (c == CLASS_LETTER || c == CLASS_NUMBER) /* ?\p{L}+ | ?\p{N}+ */
        return run(s, n, at, c, false) - i;
    if (c == CLASS_OTHER) /* ?[^\s\p{L}\p{N}]+ */
        return run(s, n, at, CLASS_OTHER, true) - i;
    /* s[i] is white space (else an alternative above took it): \s+(?!\S), else \s+ */
    size_t end = run(s, n, i, CLASS_SPACE, false);
    if (end == n)
        return end - i;
    size_t last = i, p = i; /* the run less its last code point, so that white space follows it */
    while (p < end) {
        last = p;
        decode(s, n, p, &len);
        p += len;
    }
    return last > i ? last - i : end - i;
}

/* BPE over one piece (its bytes as GPT-2's characters), ids appended. */
static int bpe(struct tokenizer *t, const unsigned char *s, size_t n, struct tokenizer_ids *ids, char *err, size_t err_n)
{
    size_t m = n, cap = 0;
    char **sym = wf_calloc(n + 1, sizeof *sym), *pair = NULL;
    for (size_t i = 0; i < n; i++)
        sym[i] = strdup(t->byte_char[s[i]]);
    int rc = 0;
    while (m > 1) {
        int64_t best = -1;
        size_t at = 0;
        for (size_t i = 0; i + 1 < m; i++) { /* the lowest-ranked pair; its first place (encoder.py merges every place of it) */
            size_t need = strlen(sym[i]) + strlen(sym[i + 1]) + 2;
            if (need > cap)
                pair = wf_realloc(pair, cap = 2 * need);
            snprintf(pair, cap, "%s %s", sym[i], sym[i + 1]);
            int64_t r = strmap_get(&t->ranks, pair, strlen(pair));
            if (r >= 0 && (best < 0 || r < best))
                best = r, at = i;
        }
        if (best < 0)
            break;
        char *a = strdup(sym[at]), *b = strdup(sym[at + 1]);
        size_t out = 0;
        for (size_t i = 0; i < m;) { /* every non-overlapping place of (a, b), left to right */
            if (i + 1 < m && !strcmp(sym[i], a) && !strcmp(sym[i + 1], b)) {
                size_t la = strlen(sym[i]), lb = strlen(sym[i + 1]);
                char *j = malloc(la + lb + 1);
                memcpy(j, sym[i], la), memcpy(j + la, sym[i + 1], lb + 1);
                free(sym[i]), free(sym[i + 1]);
                sym[out++] = j, i += 2;
            } else
                sym[out++] = sym[i++];
        }
        m = out;
        free(a), free(b);
    }
    for (size_t i = 0; i < m; i++) {
        int64_t id = rc ? -1 : strmap_get(&t->ids, sym[i], strlen(sym[i]));
        if (!rc && id < 0) {
            snprintf(err, err_n, "the token \"%s\" is not in the vocabulary", sym[i]);
            rc = -1;
        }
        if (!rc)
            push(ids, id);
        free(sym[i]);
    }
    free(sym);
    free(pair);
    return rc;
}

int tokenizer_encode(struct tokenizer *t, const char *text, size_t len, struct tokenizer_ids *ids, char *err, size_t err_n)
{
    const unsigned char *s = (const unsigned char *)text;
    if (t->type == TOKENIZER_BYTE_LEVEL) {
        for (size_t i = 0; i < len; i++)
            push(ids, s[i]);
        return 0;
    }
    if (t->type == TOKENIZER_NULL) {
        for (size_t i = 0; i < len;) {
            if (s[i] == ' ') {
                i++;
                continue;
            }
            char *end;
            errno = 0;
            long long v = strtoll(text + i, &end, 10);
            if (end == text + i || (end < text + len && *end != ' ') || errno || v < 0 || v >= t->vocab - 1) {
                int w = (int)strcspn(text + i, " ");
                snprintf(err, err_n, "\"%.*s\" is not a token id below --vocab-size %lld", w > 40 ? 40 : w, text + i,
                         (long long)t->vocab - 1);
                return -1;
            }
            push(ids, v);
            i = (size_t)(end - text);
        }
        return 0;
    }
    for (size_t i = 0; i < len;) {
        size_t n = gpt2_piece(s, len, i);
        int64_t at = memchr(s + i, 0, n) ? -1 : strmap_get(&t->cache, text + i, n), before = ids->n;
        if (at >= 0) /* a piece seen before: its ids again */
            for (int64_t k = 0; k < (at & 0xffff); k++)
                push(ids, t->cached.v[(at >> 16) + k]);
        else if (bpe(t, s + i, n, ids, err, err_n))
            return -1;
        else if (ids->n - before < 0xffff && t->cache.n < (1u << 20) && !memchr(s + i, 0, n)) { /* pieces without NULs, a million at most */
            strmap_put(&t->cache, text + i, n, t->cached.n << 16 | (ids->n - before));
            for (int64_t k = before; k < ids->n; k++)
                push(&t->cached, ids->v[k]);
        }
        i += n;
    }
    return 0;
}
