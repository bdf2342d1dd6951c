/* Categorical codes for an Arrow string column against a small vocabulary, without the GIL.
 *
 * An accelerator for `pc.index_in` on the scoring path (service/scoring/columns.py), with the same
 * answer and the same fallback: a value equal byte for byte to level i gets i + 1, an empty value
 * 0 (missing), anything else -1, which the caller sends through the exact record path (unseen
 * levels, padded text, invalid UTF-8), as it does for the values `index_in` does not find.
 *
 * NOTE: why. With 2 to 4 levels per feature, comparing lengths and then bytes is several times
 * cheaper than hashing every value, and the 15 lookups were the largest part of encoding a block
 * (measured: BENCHMARKS.md). The loop runs with the GIL released, so both scoring threads use it
 * at once, as they do Arrow's kernels.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_LEVELS 64

/* level_codes(offsets, data, offset, length, levels) -> bytearray of int64 codes
 *   offsets: the column's int32 offsets buffer; data: its bytes; offset, length: the array's slice;
 *   levels: the vocabulary as a tuple of bytes (at most MAX_LEVELS; a tuple, so that nothing can
 *   change it while the GIL is released). */
static PyObject *level_codes(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer offsets_view, data_view;
    Py_ssize_t offset, length;
    PyObject *levels;
    if (!PyArg_ParseTuple(args, "y*y*nnO!", &offsets_view, &data_view, &offset, &length, &PyTuple_Type, &levels))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_levels = PyTuple_GET_SIZE(levels);
    const char *level_text[MAX_LEVELS];
    Py_ssize_t level_len[MAX_LEVELS];
    /* NOTE: offsets [offset, offset + length] must exist; compared without computing offset + length,
     * which can wrap for huge arguments */
    Py_ssize_t n_offsets = offsets_view.len / (Py_ssize_t)sizeof(int32_t);
    if (n_levels > MAX_LEVELS || offset < 0 || length < 0 || n_offsets < 1 || length > n_offsets - 1 ||
        offset > n_offsets - 1 - length) {
        PyErr_SetString(PyExc_ValueError, "level_codes: too many levels or offsets out of range");
        goto out;
    }
    for (Py_ssize_t k = 0; k < n_levels; k++) {
        PyObject *b = PyTuple_GET_ITEM(levels, k);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "level_codes: levels must be bytes");
            goto out;
        }
        level_text[k] = PyBytes_AS_STRING(b); /* the tuple keeps them alive while we run */
        level_len[k] = PyBytes_GET_SIZE(b);
    }
    PyObject *codes = PyByteArray_FromStringAndSize(NULL, length * (Py_ssize_t)sizeof(int64_t));
    if (codes == NULL) goto out;
    int64_t *out = (int64_t *)PyByteArray_AS_STRING(codes);
    const int32_t *offs = (const int32_t *)offsets_view.buf + offset;
    const char *data = (const char *)data_view.buf;
    Py_ssize_t data_len = data_view.len;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < length; i++) {
        int32_t start = offs[i], end = offs[i + 1];
        if (start < 0 || end < start || end > data_len) {
            bad = 1;
            break;
        }
        Py_ssize_t len = end - start;
        int64_t code = len == 0 ? 0 : -1;
        const char *value = data + start;
        for (Py_ssize_t k = 0; len && k < n_levels; k++) {
            /* NOTE: the length and the first byte tell most levels apart before any call to memcmp */
            if (level_len[k] == len && level_text[k][0] == value[0] && memcmp(level_text[k], value, (size_t)len) == 0) {
                code = k + 1;
                break;
            }
        }
        out[i] = code;
    }
    Py_END_ALLOW_THREADS
    if (bad) {
        Py_DECREF(codes);
        PyErr_SetString(PyExc_ValueError, "level_codes: offsets out of range");
        goto out;
    }
    result = codes;
out:
    PyBuffer_Release(&offsets_view);
    PyBuffer_Release(&data_view);
    return result;
}

static PyMethodDef methods[] = {
    {"level_codes", level_codes, METH_VARARGS,
     "level_codes(offsets, data, offset, length, levels) -> bytearray of int64 codes (-1: not a level)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_levels",
                                    "Categorical codes of Arrow string columns without the GIL.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__levels(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_LEVELS", MAX_LEVELS) < 0) Py_CLEAR(m);
    return m;
}
