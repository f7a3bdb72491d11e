/* The stream paths' byte scans, compiled: what CPython's bytes methods can only do by reading every byte in
 * a plain loop or by paying ~600 instructions of argument parsing per call (measured: bench/README.md,
 * "A compiled helper for the stream paths"). Each function has a pure-Python twin in bytescan.py that is
 * the reference: the tests hold the two equal, and the twin runs where this did not build.
 *
 *   replace(data, old, new)          bytes.replace, with glibc's memmem (a skip table) instead of
 *                                    CPython's search, whose skip filter rarely skips JSON text
 *   sse_events(block)                (events, clean) of a block of whole server-sent events
 *   reframe(block, prefix, suffix, out_prefix, out_suffix)
 *                                    a run of events PREFIX + one JSON string + SUFFIX, re-framed as
 *                                    OUT_PREFIX + the same string + OUT_SUFFIX: (bytes, end) or None
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <string.h>

static PyObject *
replace(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "replace(data, old, new)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "replace takes bytes");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(args[0]), *old = PyBytes_AS_STRING(args[1]), *new_ = PyBytes_AS_STRING(args[2]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]), lo = PyBytes_GET_SIZE(args[1]), ln = PyBytes_GET_SIZE(args[2]);
    if (lo == 0) {
        PyErr_SetString(PyExc_ValueError, "replace: empty needle");
        return NULL;
    }
    const char *end = s + len, *at;
    Py_ssize_t n = 0;
    for (const char *p = s; (at = memmem(p, end - p, old, lo)) != NULL; p = at + lo)
        n++;
    if (n == 0) {
        Py_INCREF(args[0]);
        return args[0];
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, len + n * (ln - lo));
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    for (const char *p = s;; p = at + lo) {
        at = memmem(p, end - p, old, lo);
        if (at == NULL) {
            memcpy(w, p, end - p);
            break;
        }
        memcpy(w, p, at - p);
        w += at - p;
        memcpy(w, new_, ln);
        w += ln;
    }
    return out;
}

/* Events in a block that ends with a blank line. Clean: every newline belongs to a "\n\ndata:" or to the
 * final blank line, so the block is nothing but one-line "data:" events, and events is how many;
 * otherwise events is bytes.count(b"\n\n"). One memchr walk over the newlines. */
static PyObject *
sse_events(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "sse_events takes bytes");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(arg), *end = s + PyBytes_GET_SIZE(arg), *p = s, *nl;
    Py_ssize_t newlines = 0, data = (end - s >= 5 && memcmp(s, "data:", 5) == 0), pairs = 0;
    while (p < end && (nl = memchr(p, '\n', end - p)) != NULL) {
        newlines++;
        if (end - nl >= 7 && memcmp(nl + 1, "\ndata:", 6) == 0)
            data++;
        p = nl + 1;
    }
    if (newlines == 2 * data)
        return Py_BuildValue("(nO)", data, Py_True);
    for (p = s; p < end && (nl = memchr(p, '\n', end - p)) != NULL;) {  /* non-overlapping, left to right */
        if (nl + 1 < end && nl[1] == '\n') {
            pairs++;
            p = nl + 2;
        } else {
            p = nl + 1;
        }
    }
    return Py_BuildValue("(nO)", pairs, Py_False);
}

static int
hex4(const unsigned char *p, unsigned int *v)
{
    unsigned int x = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = p[k];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= c - '0';
        else if (c >= 'a' && c <= 'f') x |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') x |= c - 'A' + 10;
        else return 0;
    }
    *v = x;
    return 1;
}

/* Length of the well-formed UTF-8 sequence at p (strict: no overlong forms, no surrogates, nothing past
 * U+10FFFF), or 0. */
static Py_ssize_t
utf8_len(const unsigned char *p, Py_ssize_t left)
{
    unsigned char c = p[0];
    Py_ssize_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (left < n || p[1] < lo || p[1] > hi) return 0;
    for (Py_ssize_t k = 2; k < n; k++)
        if (p[k] < 0x80 || p[k] > 0xBF) return 0;
    return n;
}

/* Past the closing quote of the JSON string opening at s[i], or -1: not one well-formed string (a raw
 * control character, a bad escape, a lone surrogate escape, bad UTF-8, no closing quote). */
static Py_ssize_t
json_string_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t n)
{
    for (i++; i < n;) {
        unsigned char c = s[i];
        if (c == '"')
            return i + 1;
        if (c == '\\') {
            if (i + 1 >= n) return -1;
            switch (s[i + 1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                i += 2;
                continue;
            case 'u': {
                unsigned int v, w;
                if (i + 6 > n || !hex4(s + i + 2, &v)) return -1;
                if (v >= 0xDC00 && v <= 0xDFFF) return -1;
                if (v >= 0xD800 && v <= 0xDBFF) {  /* only as the first of a pair */
                    if (i + 12 > n || s[i + 6] != '\\' || s[i + 7] != 'u' || !hex4(s + i + 8, &w)
                            || w < 0xDC00 || w > 0xDFFF)
                        return -1;
                    i += 12;
                } else {
                    i += 6;
                }
                continue;
            }
            default:
                return -1;
            }
        }
        if (c < 0x20) return -1;
        if (c < 0x80) {
            i++;
            continue;
        }
        Py_ssize_t k = utf8_len(s + i, n - i);
        if (k == 0) return -1;
        i += k;
    }
    return -1;
}

static PyObject *
reframe(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "reframe(block, prefix, suffix, out_prefix, out_suffix)");
        return NULL;
    }
    for (int k = 0; k < 5; k++)
        if (!PyBytes_Check(args[k])) {
            PyErr_SetString(PyExc_TypeError, "reframe takes bytes");
            return NULL;
        }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    const char *pre = PyBytes_AS_STRING(args[1]), *suf = PyBytes_AS_STRING(args[2]);
    Py_ssize_t lp = PyBytes_GET_SIZE(args[1]), ls = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t lop = PyBytes_GET_SIZE(args[3]), los = PyBytes_GET_SIZE(args[4]);
    if (lp == 0 || ls == 0) {
        PyErr_SetString(PyExc_ValueError, "reframe: empty prefix or suffix");
        return NULL;
    }
    /* first pass: how far the run goes, how many events, how many text bytes */
    Py_ssize_t pos = 0, events = 0, texts = 0;
    while (pos + lp < n && memcmp(s + pos, pre, lp) == 0 && s[pos + lp] == '"') {
        Py_ssize_t t = pos + lp, e = json_string_end(s, t, n);
        if (e < 0 || e == t + 2 || e + ls > n || memcmp(s + e, suf, ls) != 0)
            break;  /* not one non-empty string, or not the learned suffix: the run ends before this event */
        events++;
        texts += e - t;
        pos = e + ls;
    }
    if (events == 0)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, texts + events * (lop + los));
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    const char *op = PyBytes_AS_STRING(args[3]), *os = PyBytes_AS_STRING(args[4]);
    for (Py_ssize_t at = 0; at < pos;) {  /* second pass: the strings are known good */
        Py_ssize_t t = at + lp, e = json_string_end(s, t, n);
        memcpy(w, op, lop);
        w += lop;
        memcpy(w, s + t, e - t);
        w += e - t;
        memcpy(w, os, los);
        w += los;
        at = e + ls;
    }
    PyObject *got = Py_BuildValue("(Nn)", out, pos);
    return got;
}

static PyMethodDef methods[] = {
    {"replace", (PyCFunction)(void (*)(void))replace, METH_FASTCALL, "bytes.replace on memmem"},
    {"sse_events", sse_events, METH_O, "(events, clean) of a block of whole server-sent events"},
    {"reframe", (PyCFunction)(void (*)(void))reframe, METH_FASTCALL, "a run of JSON-string events, re-framed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bytescan", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__bytescan(void)
{
    return PyModule_Create(&module);
}
