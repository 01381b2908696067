/* test_safetensors.c: safetensors files (runtime/safetensors.h) against
 * Hugging Face's own writer: every value of its file read back, the same
 * bytes written for the same tensors, slices written by several writers
 * in place, and the error for each way a header can lie. */
#include "testing.h"

#include "safetensors.h"

#include <fcntl.h>
#include <math.h>

static void test_reads_hf_file(void **state)
{
    (void)state;
    struct diag d;
    diag_init(&d);
    struct st_file f;
    assert_int_equal(st_open("tests/fixtures/small.safetensors", &f, &d), 0);
    assert_string_equal(st_meta(&f, "format"), "pt");
    assert_null(st_meta(&f, "absent"));
    const struct st_tensor *w = st_find(&f, "layer.0.w"), *h = st_find(&f, "half"), *x = st_find(&f, "double"), *ids = st_find(&f, "ids");
    assert_true(w && h && x && ids);
    assert_int_equal(w->rank, 2);
    assert_int_equal(w->shape[0], 3);
    assert_int_equal(w->shape[1], 4);
    float v[12];
    assert_int_equal(st_read_f32(&f, w, 0, 12, v, &d), 0);
    for (int i = 0; i < 12; i++)
        assert_true(v[i] == (float)i * 0.25f - 1.0f);
    assert_int_equal(st_read_f32(&f, w, 5, 3, v, &d), 0); /* a slice */
    assert_true(v[0] == 0.25f && v[2] == 0.75f);
    const float halves[] = {1.5f, -2.0f, 65504.0f, 6.103515625e-05f, 1.1920928955078125e-07f, INFINITY};
    assert_int_equal(st_read_f32(&f, h, 0, 6, v, &d), 0);
    for (int i = 0; i < 6; i++)
        assert_true(v[i] == halves[i]);
    assert_int_equal(st_read_f32(&f, x, 0, 6, v, &d), 0);
    assert_true(v[4] == (float)(4.0 / 3.0));
    assert_int_equal(d.n_errors, 0);
    assert_int_equal(st_read_f32(&f, ids, 0, 2, v, &d), -1); /* integers are no weights */
    assert_non_null(strstr(diag_first_error(&d), "'ids': dtype I32"));
    st_close(&f);
    diag_free(&d);
}

/* Hugging Face's floats.safetensors, written again by weft from the values
 * read out of it, by two writers each putting every other run of elements. */
static void test_writes_same_bytes(void **state)
{
    (void)state;
    struct diag d;
    diag_init(&d);
    struct st_file f;
    assert_int_equal(st_open("tests/fixtures/floats.safetensors", &f, &d), 0);
    struct st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "note", st_meta(&f, "note"));
    for (int i = 0; i < f.n; i++) {
        const struct st_tensor *t = &f.tensors[i];
        assert_int_equal(st_writer_add(w, t->name, t->dtype, t->rank, t->shape), i);
    }
    st_writer_finish(w);
    char path[] = "/tmp/weft-st-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(st_writer_create(w, fd, path, &d), 0);
    for (int i = 0; i < f.n; i++) {
        float v[64];
        int64_t n = st_tensor_elements(&f.tensors[i]);
        assert_int_equal(st_read_f32(&f, &f.tensors[i], 0, n, v, &d), 0);
        for (int writer = 1; writer >= 0; writer--) /* out of order, as ranks finish */
            for (int64_t at = writer * 4; at < n; at += 8)
                assert_int_equal(st_writer_put_f32(w, fd, path, i, at, v + at, n - at < 4 ? n - at : 4, &d), 0);
    }
    close(fd);
    size_t a_len, b_len;
    char *a = wf_read_file("tests/fixtures/floats.safetensors", 1 << 20, &a_len), *b = wf_read_file(path, 1 << 20, &b_len);
    assert_int_equal(a_len, st_writer_file_bytes(w));
    assert_int_equal(a_len, b_len);
    assert_memory_equal(a, b, a_len);
    free(a), free(b);
    unlink(path);
    st_writer_free(w);
    st_close(&f);
    diag_free(&d);
}

/* A file of a header (its length as given) and data bytes. */
static void write_file(const char *path, const char *header, uint64_t claimed, int64_t data_bytes)
{
    FILE *o = fopen(path, "wb");
    assert_non_null(o);
    uint64_t n = claimed ? claimed : strlen(header);
    for (int k = 0; k < 8; k++)
        fputc((int)(n >> (8 * k) & 0xff), o);
    fputs(header, o);
    for (int64_t i = 0; i < data_bytes; i++)
        fputc(0, o);
    fclose(o);
}

static void check_rejected(const char *header, uint64_t claimed, int64_t data_bytes, const char *want)
{
    const char *path = "/tmp/weft-st-bad.safetensors";
    write_file(path, header, claimed, data_bytes);
    struct diag d;
    diag_init(&d);
    struct st_file f;
    int rc = st_open(path, &f, &d);
    if (rc != 2 || !strstr(diag_first_error(&d), want) || !strstr(diag_first_error(&d), path))
        fail_msg("header %s: expected an error naming the file with '%s', got %d: %s", header, want, rc, diag_first_error(&d));
    st_close(&f);
    diag_free(&d);
    unlink(path);
}

static void test_lying_headers(void **state)
{
    (void)state;
    check_rejected("{}", 1000, 0, "claims 1000 bytes");
    check_rejected("[1]", 0, 0, "not a JSON object");
    check_rejected("{\"a\":", 0, 0, "not a JSON object");
    check_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 4, "'a': data_offsets [0, 8] lie outside");
    check_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8, "'a': data_offsets [0, 8] hold 8 bytes");
    check_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                   0, 12, "overlap");
    check_rejected("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, "'a': unknown dtype \"Q4\"");
    check_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8, "'a': dimension 0");
    check_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 0, 8, "'a': its header entry needs");
    check_rejected("{\"__metadata__\":{\"k\":1}}", 0, 0, "\"k\" is not a string");
    struct diag d;
    diag_init(&d);
    struct st_file f;
    assert_int_equal(st_open("/nonexistent/x.safetensors", &f, &d), 2);
    assert_non_null(strstr(diag_first_error(&d), "/nonexistent/x.safetensors"));
    st_close(&f);
    diag_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_hf_file),
        cmocka_unit_test(test_writes_same_bytes),
        cmocka_unit_test(test_lying_headers),
    };
    return cmocka_run_group_tests_name("safetensors", tests, NULL, NULL);
}
