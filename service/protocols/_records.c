/* The usual /predict body, {"records": [...]}, decoded straight into the model's input arrays.
 *
 * An accelerator with an exact fallback, never a second contract: it accepts only the plain form of
 * the body (every record holds every feature, each once; numbers as JSON numbers or null; categories
 * as known levels or null, with no escapes; ids as strings with no escapes, or null; other fields,
 * which every path ignores, skipped where name and value are plain: a string with no escapes, a
 * number, true, false or null) and answers None for anything else, which then takes the msgspec path and,
 * failing that, the general one (service/protocols/native.py). It never raises for a bad body and
 * never decides what a value means: numbers are read as Python reads them (correctly rounded to a
 * double, then rounded to float32 as NumPy does), levels are matched byte for byte against the
 * bundle's vocabulary (UTF-8), exactly as the Python paths compare strings.
 *
 * NOTE: why it exists. For a 100-record body the Python paths spend ~2 µs per record creating a
 * Python object per value, pulling them out again and looking levels up, all under the GIL of the
 * event-loop thread (measured: BENCHMARKS.md). Here no object is created per value.
 *
 * Memory safety: every read is checked against the end of the body (the cursor's `end`) before it
 * happens; output buffers grow by doubling with overflow checks; nothing is kept between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <float.h>
#include <stdint.h>
#include <string.h>

#define MAX_NUMBER_TEXT 64
#define MAX_FIELDS 4096
#define MAX_TOP_KEYS 16

enum { KIND_NUMERIC = 0, KIND_CATEGORICAL = 1, KIND_ID = 2 };

typedef struct {
    const char *text;   /* UTF-8 bytes of the level (owned by `owner` below) */
    Py_ssize_t len;
} Level;

typedef struct {
    const char *name;   /* the field's name as UTF-8 (owned by `owner`) */
    Py_ssize_t len;
    int kind;
    int column;         /* column in num / cat, or index among the id columns */
    Level *levels;      /* categorical only: levels[i] has code i + 1 */
    Py_ssize_t n_levels;
} Field;

typedef struct {
    PyObject_HEAD
    Field *fields;
    Py_ssize_t n_fields, n_num, n_cat, n_ids;
    PyObject *owner;    /* a list holding every bytes object the pointers above point into */
    PyObject *absent;   /* the marker for an id column a record lacks */
} Decoder;

/* ---------------------------------------------------------------- parsing helpers */

typedef struct {
    const char *p, *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

/* Consume `ch` (after whitespace); 0 when the next character is something else. */
static inline int eat(Cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static inline int eat_word(Cursor *c, const char *word, Py_ssize_t len) {
    if (c->end - c->p >= len && memcmp(c->p, word, (size_t)len) == 0) {
        c->p += len;
        return 1;
    }
    return 0;
}

/* A string with no escapes and no control characters: its bytes between the quotes. The cursor is
 * on the opening quote. 0 for anything else (the caller then answers None). */
static int plain_string(Cursor *c, const char **start, Py_ssize_t *len) {
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *s = ++c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            *start = s;
            *len = c->p - s;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20) return 0;
        c->p++;
    }
    return 0;
}

/* Skip a plain string (as `plain_string`) that is valid UTF-8, as every other path requires. */
static int skip_plain_string(Cursor *c) {
    const char *text;
    Py_ssize_t len;
    if (!plain_string(c, &text, &len)) return 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if ((unsigned char)text[i] >= 0x80) { /* rare: let Python's strict decoder judge it */
            PyObject *s = PyUnicode_DecodeUTF8(text, len, NULL);
            if (s == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(s);
            return 1;
        }
    }
    return 1;
}

static int json_number(Cursor *c, double *out);

/* Skip the value of a field that is not a feature or an id: a plain string, a finite number, true,
 * false or null. 0 for anything else (an object, an array, an escape): the other paths read it. */
static int skip_plain_value(Cursor *c) {
    skip_ws(c);
    if (c->p >= c->end) return 0;
    if (*c->p == '"') return skip_plain_string(c);
    if (eat_word(c, "null", 4) || eat_word(c, "true", 4) || eat_word(c, "false", 5)) return 1;
    double v;
    return json_number(c, &v) && isfinite(v);
}

/* Whether `n` bytes at a and b are equal (short strings: no call into libc). */
static inline int same(const char *a, const char *b, Py_ssize_t n) {
    while (n >= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
        a += 8, b += 8, n -= 8;
    }
    while (n > 0) {
        if (*a++ != *b++) return 0;
        n--;
    }
    return 1;
}

/* Consume the JSON string "text" when it is exactly that. `text` holds no quote, backslash or
 * control character (checked when the decoder is built), so equal bytes between the quotes are
 * the same string a full scan would give. */
static inline int quoted(Cursor *c, const char *text, Py_ssize_t len) {
    if (c->end - c->p < len + 2 || c->p[0] != '"' || c->p[len + 1] != '"' || !same(c->p + 1, text, len)) return 0;
    c->p += len + 2;
    return 1;
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number (its grammar checked strictly) → double, correctly rounded. 0 when the text is not a
 * JSON number or is too long. Short decimals take the exact fast path (an integer below 2^53 divided
 * or multiplied by an exactly representable power of ten rounds correctly); the rest go through
 * CPython's own correctly rounded conversion (the one `float()` uses; needs the GIL, held here). */
static int json_number(Cursor *c, double *out) {
    const char *s = c->p, *q = c->p, *e = c->end;
    int negative = 0;
    if (q < e && *q == '-') {
        negative = 1;
        q++;
    }
    if (q >= e) return 0;
    uint64_t mantissa = 0;
    int digits = 0, exact = 1, frac_digits = 0;
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        while (q < e && *q >= '0' && *q <= '9') {
            if (digits < 19) mantissa = mantissa * 10 + (uint64_t)(*q - '0');
            else exact = 0;
            digits++;
            q++;
        }
    } else {
        return 0;
    }
    if (q < e && *q == '.') {
        q++;
        if (q >= e || *q < '0' || *q > '9') return 0;
        while (q < e && *q >= '0' && *q <= '9') {
            if (digits < 19) mantissa = mantissa * 10 + (uint64_t)(*q - '0');
            else exact = 0;
            if (mantissa != 0 || *q != '0') digits++;
            frac_digits++;
            q++;
        }
    }
    int has_exponent = 0;
    if (q < e && (*q == 'e' || *q == 'E')) {
        has_exponent = 1;
        q++;
        if (q < e && (*q == '+' || *q == '-')) q++;
        if (q >= e || *q < '0' || *q > '9') return 0;
        while (q < e && *q >= '0' && *q <= '9') q++;
    }
    Py_ssize_t len = q - s;
    if (len > MAX_NUMBER_TEXT) return 0;
    c->p = q;
    if (exact && !has_exponent && mantissa < ((uint64_t)1 << 53) && frac_digits <= 22) {
        double v = (double)mantissa;
        v = frac_digits ? v / POW10[frac_digits] : v;
        *out = negative ? -v : v;
        return 1;
    }
    char text[MAX_NUMBER_TEXT + 1];
    memcpy(text, s, (size_t)len);
    text[len] = '\0';
    char *stop = NULL;
    double v = PyOS_string_to_double(text, &stop, NULL); /* NULL: overflow gives ±inf, no exception */
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (stop != text + len) return 0;
    *out = v;
    return 1;
}

/* ---------------------------------------------------------------- growable output */

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

static int reserve(Buffer *b, Py_ssize_t more) {
    if (more > PY_SSIZE_T_MAX - b->size) return 0;
    Py_ssize_t want = b->size + more;
    if (want <= b->capacity) return 1;
    Py_ssize_t cap = b->capacity ? b->capacity : 4096;
    while (cap < want) {
        if (cap > PY_SSIZE_T_MAX / 2) return 0;
        cap *= 2;
    }
    char *grown = PyMem_Realloc(b->data, (size_t)cap);
    if (grown == NULL) return 0;
    b->data = grown;
    b->capacity = cap;
    return 1;
}

/* ---------------------------------------------------------------- the decoder */

/* The field whose name is the key at the cursor, or NULL (the cursor then is anywhere). `guess`
 * first: records usually list their fields in the same order, so the field after the previous one
 * is nearly always the next, and one comparison replaces a scan. */
static const Field *key_field(const Decoder *d, Cursor *c, Py_ssize_t guess) {
    if (guess < d->n_fields && quoted(c, d->fields[guess].name, d->fields[guess].len)) return &d->fields[guess];
    const char *name;
    Py_ssize_t len;
    if (!plain_string(c, &name, &len)) return NULL;
    for (Py_ssize_t i = 0; i < d->n_fields; i++) {
        const Field *f = &d->fields[i];
        if (f->len == len && same(f->name, name, len)) return f;
    }
    return NULL;
}

/* The code of the level at the cursor (consumed), or 0 when the string there is not exactly one
 * of the levels (unseen, padded, escaped: the Python paths decide). */
static Py_ssize_t level_code(const Field *f, Cursor *c) {
    for (Py_ssize_t i = 0; i < f->n_levels; i++) {
        if (quoted(c, f->levels[i].text, f->levels[i].len)) return i + 1;
    }
    return 0;
}

typedef struct {
    Buffer num, cat;
    PyObject **ids; /* one list per id column */
    unsigned char *seen;
    Py_ssize_t *next; /* next[i]: the field that followed field i last time (a guess), n_fields + 1 slots */
} Work;

/* One record at the cursor ('{' already checked by the caller). 1: decoded; 0: not the plain form. */
static int record(const Decoder *d, Cursor *c, Work *w) {
    float *num = (float *)(w->num.data + w->num.size);
    int64_t *cat = (int64_t *)(w->cat.data + w->cat.size);
    memset(w->seen, 0, (size_t)d->n_fields);
    PyObject *id_values[64];
    for (Py_ssize_t k = 0; k < d->n_ids; k++) id_values[k] = NULL;
    Py_ssize_t found = 0, previous = d->n_fields; /* slot n_fields: the first field */
    int ok = 0, skipped = 0, nulls = 0;
    c->p++; /* '{' */
    if (eat(c, '}')) goto done;
    for (;;) {
        skip_ws(c);
        const char *key = c->p;
        const Field *f = key_field(d, c, w->next[previous]);
        if (f == NULL) { /* a field that is not a feature: ignored (with every feature present, unwarned) */
            c->p = key;
            if (!skip_plain_string(c) || !eat(c, ':') || !skip_plain_value(c)) goto done;
            skipped = 1;
            if (eat(c, ',')) continue;
            if (eat(c, '}')) break;
            goto done;
        }
        if (!eat(c, ':')) goto done;
        Py_ssize_t index = f - d->fields;
        w->next[previous] = index;
        previous = index;
        if (w->seen[index]) goto done; /* given twice */
        w->seen[index] = 1;
        skip_ws(c);
        if (eat_word(c, "null", 4)) {
            nulls |= f->kind != KIND_ID;
            if (f->kind == KIND_NUMERIC) num[f->column] = NAN;
            else if (f->kind == KIND_CATEGORICAL) cat[f->column] = 0;
            else id_values[f->column] = Py_NewRef(Py_None);
        } else if (f->kind == KIND_NUMERIC) {
            double v;
            if (!json_number(c, &v) || !isfinite(v) || fabs(v) > FLT_MAX) goto done;
            num[f->column] = (float)v;
        } else if (f->kind == KIND_CATEGORICAL) {
            Py_ssize_t code = level_code(f, c);
            if (code == 0) goto done;
            cat[f->column] = code;
        } else {
            const char *text;
            Py_ssize_t tlen;
            if (!plain_string(c, &text, &tlen)) goto done;
            PyObject *s = PyUnicode_DecodeUTF8(text, tlen, NULL);
            if (s == NULL) { /* not UTF-8: the Python paths refuse it */
                PyErr_Clear();
                goto done;
            }
            id_values[f->column] = s;
        }
        if (f->kind != KIND_ID) found++;
        if (eat(c, ',')) continue;
        if (eat(c, '}')) break;
        goto done;
    }
    if (found != d->n_num + d->n_cat) goto done; /* a feature absent: imputed (and maybe warned) elsewhere */
    if (skipped && nulls) goto done; /* a null feature beside another field: is that field it, mistyped? */
    for (Py_ssize_t k = 0; k < d->n_ids; k++) {
        PyObject *v = id_values[k] ? id_values[k] : Py_NewRef(d->absent);
        id_values[k] = NULL;
        int failed = PyList_Append(w->ids[k], v);
        Py_DECREF(v);
        if (failed) {
            PyErr_Clear();
            goto done;
        }
    }
    w->num.size += d->n_num * (Py_ssize_t)sizeof(float);
    w->cat.size += d->n_cat * (Py_ssize_t)sizeof(int64_t);
    ok = 1;
done:
    for (Py_ssize_t k = 0; k < d->n_ids; k++) Py_XDECREF(id_values[k]);
    return ok;
}

/* decode(body, max_records) -> (num: bytearray, cat: bytearray, rows: int, ids: list[list]) | None */
static PyObject *Decoder_decode(Decoder *d, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode(body, max_records)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t max_records = PyLong_AsSsize_t(args[1]);
    if (max_records == -1 && PyErr_Occurred()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *result = NULL;
    Work w = {{NULL, 0, 0}, {NULL, 0, 0}, NULL, NULL, NULL};
    w.seen = PyMem_Malloc((size_t)(d->n_fields ? d->n_fields : 1));
    w.ids = PyMem_Calloc((size_t)(d->n_ids ? d->n_ids : 1), sizeof(PyObject *));
    w.next = PyMem_Calloc((size_t)d->n_fields + 1, sizeof(Py_ssize_t));
    if (w.seen == NULL || w.ids == NULL || w.next == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t k = 0; k < d->n_ids; k++) {
        if ((w.ids[k] = PyList_New(0)) == NULL) goto out;
    }
    Cursor c = {(const char *)view.buf, (const char *)view.buf + view.len};
    const char *key;
    Py_ssize_t key_len;
    Py_ssize_t rows = 0;
    int seen_records = 0;
    const char *other[MAX_TOP_KEYS]; /* the other top-level keys: one given twice is the general path's to refuse */
    Py_ssize_t other_len[MAX_TOP_KEYS], n_other = 0;
    if (!eat(&c, '{')) goto plain_fails;
    for (;;) { /* "records" once; other top-level keys (not "explain") skipped where plain */
        skip_ws(&c);
        const char *at = c.p;
        if (!plain_string(&c, &key, &key_len)) goto plain_fails;
        if (key_len == 7 && memcmp(key, "explain", 7) == 0) goto plain_fails; /* reasons: the general path */
        if (key_len != 7 || memcmp(key, "records", 7) != 0) {
            if (n_other == MAX_TOP_KEYS) goto plain_fails;
            for (Py_ssize_t i = 0; i < n_other; i++) {
                if (other_len[i] == key_len && same(other[i], key, key_len)) goto plain_fails;
            }
            other[n_other] = key, other_len[n_other++] = key_len;
            c.p = at;
            if (!skip_plain_string(&c) || !eat(&c, ':') || !skip_plain_value(&c)) goto plain_fails;
        } else {
            if (seen_records++ || !eat(&c, ':') || !eat(&c, '[')) goto plain_fails;
            for (;;) {
                if (!eat(&c, '{')) goto plain_fails;
                c.p--;
                if (rows >= max_records) goto plain_fails;
                if (!reserve(&w.num, d->n_num * (Py_ssize_t)sizeof(float)) ||
                    !reserve(&w.cat, d->n_cat * (Py_ssize_t)sizeof(int64_t))) {
                    PyErr_NoMemory();
                    goto out;
                }
                if (!record(d, &c, &w)) goto plain_fails;
                rows++;
                if (eat(&c, ',')) continue;
                if (eat(&c, ']')) break;
                goto plain_fails;
            }
        }
        if (eat(&c, ',')) continue;
        if (eat(&c, '}')) break;
        goto plain_fails;
    }
    if (!seen_records) goto plain_fails;
    skip_ws(&c);
    if (c.p != c.end) goto plain_fails;
    {
        PyObject *num = PyByteArray_FromStringAndSize(w.num.data ? w.num.data : "", w.num.size);
        PyObject *cat = PyByteArray_FromStringAndSize(w.cat.data ? w.cat.data : "", w.cat.size);
        PyObject *ids = PyList_New(d->n_ids);
        if (num && cat && ids) {
            for (Py_ssize_t k = 0; k < d->n_ids; k++) {
                PyList_SET_ITEM(ids, k, w.ids[k]);
                w.ids[k] = NULL;
            }
            result = Py_BuildValue("(NNnN)", num, cat, rows, ids);
        } else {
            Py_XDECREF(num);
            Py_XDECREF(cat);
            Py_XDECREF(ids);
        }
    }
    goto out;
plain_fails:
    result = Py_NewRef(Py_None);
out:
    if (w.ids) {
        for (Py_ssize_t k = 0; k < d->n_ids; k++) Py_XDECREF(w.ids[k]);
        PyMem_Free(w.ids);
    }
    PyMem_Free(w.seen);
    PyMem_Free(w.next);
    PyMem_Free(w.num.data);
    PyMem_Free(w.cat.data);
    PyBuffer_Release(&view);
    return result;
}

/* ---------------------------------------------------------------- construction */

/* Keep `text` (a str) alive as UTF-8 bytes in `owner`; point at them. A name or level that JSON
 * could only write escaped (a quote, a backslash, a control character) is refused: `quoted`
 * relies on there being none (the caller then decodes every body in Python). */
static int utf8_of(PyObject *owner, PyObject *text, const char **out, Py_ssize_t *len) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "names and levels must be str");
        return 0;
    }
    PyObject *b = PyUnicode_AsUTF8String(text);
    if (b == NULL) return 0;
    int failed = PyList_Append(owner, b);
    Py_DECREF(b);
    if (failed) return 0;
    *out = PyBytes_AS_STRING(b);
    *len = PyBytes_GET_SIZE(b);
    for (Py_ssize_t i = 0; i < *len; i++) {
        unsigned char ch = (unsigned char)(*out)[i];
        if (ch == '"' || ch == '\\' || ch < 0x20) {
            PyErr_SetString(PyExc_ValueError, "a name or level JSON writes escaped");
            return 0;
        }
    }
    return 1;
}

/* Decoder(numeric: list[str], categorical: list[tuple[str, list[str]]], ids: list[str], absent) */
static int Decoder_init(Decoder *d, PyObject *args, PyObject *Py_UNUSED(kwargs)) {
    PyObject *numeric, *categorical, *ids, *absent;
    if (!PyArg_ParseTuple(args, "O!O!O!O", &PyList_Type, &numeric, &PyList_Type, &categorical, &PyList_Type, &ids,
                          &absent))
        return -1;
    if (d->fields != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder is already initialised");
        return -1;
    }
    Py_ssize_t n_num = PyList_GET_SIZE(numeric), n_cat = PyList_GET_SIZE(categorical), n_ids = PyList_GET_SIZE(ids);
    Py_ssize_t n = n_num + n_cat + n_ids;
    if (n > MAX_FIELDS || n_ids > 64) {
        PyErr_SetString(PyExc_ValueError, "too many fields for the fast decoder");
        return -1;
    }
    d->owner = PyList_New(0);
    d->fields = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Field));
    if (d->owner == NULL || d->fields == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    d->absent = Py_NewRef(absent);
    d->n_num = n_num, d->n_cat = n_cat, d->n_ids = n_ids;
    for (Py_ssize_t i = 0; i < n; i++) {
        Field *f = &d->fields[i];
        d->n_fields = i + 1;
        PyObject *name;
        if (i < n_num) {
            f->kind = KIND_NUMERIC, f->column = (int)i;
            name = PyList_GET_ITEM(numeric, i);
        } else if (i < n_num + n_cat) {
            f->kind = KIND_CATEGORICAL, f->column = (int)(i - n_num);
            PyObject *item = PyList_GET_ITEM(categorical, i - n_num);
            PyObject *vocab;
            if (!PyArg_ParseTuple(item, "OO!", &name, &PyList_Type, &vocab)) return -1;
            f->n_levels = PyList_GET_SIZE(vocab);
            f->levels = PyMem_Calloc((size_t)(f->n_levels ? f->n_levels : 1), sizeof(Level));
            if (f->levels == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            for (Py_ssize_t j = 0; j < f->n_levels; j++) {
                if (!utf8_of(d->owner, PyList_GET_ITEM(vocab, j), &f->levels[j].text, &f->levels[j].len)) return -1;
            }
        } else {
            f->kind = KIND_ID, f->column = (int)(i - n_num - n_cat);
            name = PyList_GET_ITEM(ids, i - n_num - n_cat);
        }
        if (!utf8_of(d->owner, name, &f->name, &f->len)) return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) { /* a name twice would make `seen` ambiguous */
        const Field *f = &d->fields[i];
        Py_ssize_t first = 0;
        while (first < i && !(d->fields[first].len == f->len && same(d->fields[first].name, f->name, f->len))) first++;
        if (first != i) {
            PyErr_SetString(PyExc_ValueError, "a field name appears twice");
            return -1;
        }
    }
    return 0;
}

static void Decoder_dealloc(Decoder *d) {
    if (d->fields) {
        for (Py_ssize_t i = 0; i < d->n_fields; i++) PyMem_Free(d->fields[i].levels);
        PyMem_Free(d->fields);
    }
    Py_XDECREF(d->owner);
    Py_XDECREF(d->absent);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))Decoder_decode, METH_FASTCALL,
     "decode(body, max_records) -> (num, cat, rows, ids) or None when the body is not the plain form"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "service.protocols._records.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A bundle's decoder of plain {\"records\": [...]} bodies into num/cat arrays.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records",
                                    "Plain {\"records\": [...]} bodies straight into model inputs.", -1, NULL};

PyMODINIT_FUNC PyInit__records(void) {
    if (PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
