/* What api/_wire/'s files share: the buffer of the two passes, varints,
 * and the functions one file gives the others (module.c says why the
 * module exists and how it works). Everything here is hidden from other
 * shared objects: the module exports only PyInit__wire. */

#ifndef SPUR_RUNS_WIRE_H
#define SPUR_RUNS_WIRE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

#define WIRE_HIDDEN __attribute__((visibility("hidden")))

/* What this module does not write as api/convert.py would: a value that is
 * not JSON, a column of another type, a row of another shape, JSON nested
 * past MAX_DEPTH. convert.py builds those as messages instead, which says
 * what is wrong (DataLoss) or serves them. (OverflowError and
 * UnicodeEncodeError, raised by CPython's conversions, mean the same.)
 * Any other error is a bug, and is not caught. */
WIRE_HIDDEN extern PyObject *Refused;

/* --- lengths, kept in pre-order between the two passes ------------------ */

typedef struct {
    Py_ssize_t *items;
    Py_ssize_t count; /* filled by the measuring pass */
    Py_ssize_t capacity;
    Py_ssize_t next; /* read by the writing pass */
    char *out;       /* the writing pass's position */
    int depth;       /* of the JSON value being measured */
} Enc;

/* JSON nested deeper than this is left to convert.py (RecursionError here):
 * it serves what Python's recursion reaches and says DATA_LOSS past it
 * (tests/integration/test_deep_json.py), as it did before this module. */
#define MAX_DEPTH 128

static inline Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t n = 1;
    while (value >= 0x80) {
        value >>= 7;
        n++;
    }
    return n;
}

/* A length-delimited field: its tag (one byte: every field here is below
 * 16), its length's varint, its payload. */
static inline Py_ssize_t delimited(Py_ssize_t payload) {
    return 1 + varint_size((uint64_t)payload) + payload;
}

static inline void put_varint(Enc *e, uint64_t value) {
    while (value >= 0x80) {
        *e->out++ = (char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    *e->out++ = (char)value;
}

static inline void put_tag_length(Enc *e, unsigned char tag, Py_ssize_t length) {
    *e->out++ = (char)tag;
    put_varint(e, (uint64_t)length);
}

static inline void put_bytes(Enc *e, const char *data, Py_ssize_t size) {
    memcpy(e->out, data, (size_t)size);
    e->out += size;
}

/* A string field: tag, length, UTF-8. */
static inline void put_text(Enc *e, unsigned char tag, const char *data, Py_ssize_t size) {
    put_tag_length(e, tag, size);
    put_bytes(e, data, size);
}

static inline void put_double(Enc *e, double number) {
    uint64_t bits;
    memcpy(&bits, &number, sizeof bits);
    for (int i = 0; i < 8; i++) *e->out++ = (char)(bits >> (8 * i)); /* little-endian */
}

/* A datetime's Timestamp, and the size of that message. */
typedef struct {
    int64_t seconds;
    int32_t nanos;
    Py_ssize_t size; /* the Timestamp message's size */
} Stamp;

/* values.c: the lengths, JSON values (google.protobuf.Value, Struct,
 * ListValue), timestamps, the passes' check. */
WIRE_HIDDEN int wire_init(void);
WIRE_HIDDEN int enter(Enc *e);
WIRE_HIDDEN Py_ssize_t reserve(Enc *e);
WIRE_HIDDEN int text(PyObject *value, const char **data, Py_ssize_t *size);
WIRE_HIDDEN PyObject *own_row(PyObject *row);
WIRE_HIDDEN Py_ssize_t measure_fields(Enc *e, PyObject *value);
WIRE_HIDDEN Py_ssize_t measure_struct(Enc *e, PyObject *value);
WIRE_HIDDEN int write_fields(Enc *e, PyObject *value);
WIRE_HIDDEN Py_ssize_t measure_value(Enc *e, PyObject *value);
WIRE_HIDDEN int write_value(Enc *e, PyObject *value);
WIRE_HIDDEN int stamp(PyObject *value, Stamp *out);
WIRE_HIDDEN void write_stamp(Enc *e, unsigned char tag, const Stamp *s);
WIRE_HIDDEN PyObject *finish(Enc *e, PyObject *bytes, Py_ssize_t total);

/* The module's functions (values.c, tasks.c, runs.c) */
WIRE_HIDDEN PyObject *encode_value(PyObject *self, PyObject *value);
WIRE_HIDDEN PyObject *encode_tasks(PyObject *self, PyObject *args);
WIRE_HIDDEN PyObject *encode_run(PyObject *self, PyObject *args);

#endif
