/* JSON values (what orjson.loads returns) as google.protobuf.Value, Struct
 * and ListValue bytes; datetimes as Timestamps; the lengths kept between
 * the two passes (module.c). */

#include "wire.h"

int enter(Enc *e) {
    if (++e->depth > MAX_DEPTH) {
        e->depth--;
        PyErr_SetString(Refused, "a JSON value nested too deeply for _wire");
        return -1;
    }
    return 0;
}

Py_ssize_t reserve(Enc *e) {
    if (e->count == e->capacity) {
        Py_ssize_t capacity = e->capacity ? e->capacity * 2 : 256;
        Py_ssize_t *items = PyMem_Realloc(e->items, (size_t)capacity * sizeof(Py_ssize_t));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        e->items = items;
        e->capacity = capacity;
    }
    return e->count++;
}

/* google.protobuf.Value's fields (struct.proto) */
#define VALUE_NULL 0x08   /* 1, varint */
#define VALUE_NUMBER 0x11 /* 2, 64-bit */
#define VALUE_STRING 0x1A /* 3, delimited */
#define VALUE_BOOL 0x20   /* 4, varint */
#define VALUE_STRUCT 0x2A /* 5, delimited */
#define VALUE_LIST 0x32   /* 6, delimited */
/* Struct.fields (1, map entries), an entry's key (1) and value (2);
 * ListValue.values (1) */
#define STRUCT_FIELDS 0x0A
#define ENTRY_KEY 0x0A
#define ENTRY_VALUE 0x12
#define LIST_VALUES 0x0A

int text(PyObject *value, const char **data, Py_ssize_t *size) {
    /* UTF-8, cached in the str object by CPython: the second pass reads the
     * same buffer. A lone surrogate raises UnicodeEncodeError, as upb does. */
    *data = PyUnicode_AsUTF8AndSize(value, size);
    return *data == NULL ? -1 : 0;
}

/* Only dict, list, tuple and int themselves (orjson's and json's types),
 * not their subclasses: convert.py reads a subclass of dict through its
 * items(), of list and tuple by iterating it, of int through __float__
 * (upb's number_value), any of which a subclass may override. Those are
 * convert.py's to write. (bool is int's subclass, handled before.) */
static int refuse_subclass(PyObject *value) {
    PyErr_Format(Refused, "a %.100s, not one of JSON's own types", Py_TYPE(value)->tp_name);
    return -1;
}

/* A row as a tuple of our own (a new reference), or NULL: store.hot's rows
 * are tuples already (of a subclass, which PySequence_Tuple would copy); a
 * list row is copied, as Python code run during the first pass (a tzinfo's
 * utcoffset) could change it after its strings' UTF-8 is taken. */
PyObject *own_row(PyObject *row) {
    if (PyTuple_Check(row)) {
        Py_INCREF(row);
        return row;
    }
    return PySequence_Tuple(row);
}

/* A Struct holding dict `value`, as a field's payload: its size, the
 * payload's length kept first. Anything but a dict is refused: a Struct
 * holds only a JSON object (convert.py then says so: DataLoss). */
Py_ssize_t measure_struct(Enc *e, PyObject *value) {
    if (!PyDict_Check(value)) {
        PyErr_SetString(Refused, "a Struct's column is not a JSON object");
        return -1;
    }
    if (enter(e) < 0) return -1;
    Py_ssize_t slot = reserve(e);
    Py_ssize_t inner = slot < 0 ? -1 : measure_fields(e, value);
    e->depth--;
    if (inner >= 0) e->items[slot] = inner;
    return inner;
}

/* The entries of a Struct holding dict `value`: their size. */
Py_ssize_t measure_fields(Enc *e, PyObject *value) {
    Py_ssize_t total = 0, pos = 0;
    PyObject *key, *item;
    if (!PyDict_CheckExact(value)) return refuse_subclass(value);
    while (PyDict_Next(value, &pos, &key, &item)) {
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(Refused, "a JSON object's key is not a string");
            return -1;
        }
        const char *data;
        Py_ssize_t size;
        if (text(key, &data, &size) < 0) return -1;
        Py_ssize_t slot = reserve(e);
        if (slot < 0) return -1;
        Py_ssize_t inner = measure_value(e, item);
        if (inner < 0) return -1;
        Py_ssize_t entry = delimited(size) + delimited(inner);
        e->items[slot] = entry;
        total += delimited(entry);
    }
    return total;
}

int write_fields(Enc *e, PyObject *value) {
    Py_ssize_t pos = 0;
    PyObject *key, *item;
    while (PyDict_Next(value, &pos, &key, &item)) {
        const char *data;
        Py_ssize_t size;
        if (text(key, &data, &size) < 0) return -1;
        put_tag_length(e, STRUCT_FIELDS, e->items[e->next++]);
        put_tag_length(e, ENTRY_KEY, size);
        put_bytes(e, data, size);
        /* the value's length is its own first slot, which write_value skips */
        put_tag_length(e, ENTRY_VALUE, e->items[e->next]);
        if (write_value(e, item) < 0) return -1;
    }
    return 0;
}

/* A Value's size, with its length-delimited parts' lengths kept. Every
 * Value is written as a delimited field (an entry's value, a list item, a
 * Task's field), so its own length is kept first. */
Py_ssize_t measure_value(Enc *e, PyObject *value) {
    Py_ssize_t slot = reserve(e);
    if (slot < 0) return -1;
    Py_ssize_t size;
    if (PyUnicode_Check(value)) {
        const char *data;
        Py_ssize_t length;
        if (text(value, &data, &length) < 0) return -1;
        size = delimited(length);
    } else if (PyDict_Check(value)) {
        Py_ssize_t inner = measure_struct(e, value);
        if (inner < 0) return -1;
        size = delimited(inner); /* {} too: struct_value set, empty */
    } else if (PyBool_Check(value)) {
        size = 2;
    } else if (PyFloat_Check(value)) {
        size = 9;
    } else if (PyLong_Check(value)) {
        if (!PyLong_CheckExact(value)) return refuse_subclass(value);
        /* Only to raise OverflowError where no double holds it, as upb. */
        double number = PyLong_AsDouble(value);
        if (number == -1.0 && PyErr_Occurred()) return -1;
        size = 9;
    } else if (value == Py_None) {
        size = 2;
    } else if (PyList_Check(value) || PyTuple_Check(value)) {
        if (!PyList_CheckExact(value) && !PyTuple_CheckExact(value)) {
            return refuse_subclass(value);
        }
        if (enter(e) < 0) return -1;
        Py_ssize_t inner_slot = reserve(e);
        Py_ssize_t inner = 0;
        if (inner_slot < 0) inner = -1;
        /* PySequence_Fast_ITEMS: no Python code runs, the list cannot change */
        Py_ssize_t count = PySequence_Fast_GET_SIZE(value);
        PyObject **items = PySequence_Fast_ITEMS(value);
        for (Py_ssize_t i = 0; inner >= 0 && i < count; i++) {
            Py_ssize_t item = measure_value(e, items[i]);
            inner = item < 0 ? -1 : inner + delimited(item);
        }
        e->depth--;
        if (inner < 0) return -1;
        e->items[inner_slot] = inner;
        size = delimited(inner);
    } else {
        PyErr_Format(Refused, "not a JSON value: %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    e->items[slot] = size;
    return size;
}

int write_value(Enc *e, PyObject *value) {
    Py_ssize_t size = e->items[e->next++];
    (void)size;
    if (PyUnicode_Check(value)) {
        const char *data;
        Py_ssize_t length;
        if (text(value, &data, &length) < 0) return -1;
        put_tag_length(e, VALUE_STRING, length);
        put_bytes(e, data, length);
    } else if (PyDict_Check(value)) {
        put_tag_length(e, VALUE_STRUCT, e->items[e->next++]);
        return write_fields(e, value);
    } else if (PyBool_Check(value)) {
        *e->out++ = VALUE_BOOL;
        *e->out++ = value == Py_True ? 1 : 0;
    } else if (PyFloat_Check(value) || PyLong_Check(value)) {
        double number = PyFloat_Check(value) ? PyFloat_AS_DOUBLE(value) : PyLong_AsDouble(value);
        if (number == -1.0 && PyErr_Occurred()) return -1;
        uint64_t bits;
        memcpy(&bits, &number, sizeof bits);
        *e->out++ = VALUE_NUMBER;
        for (int i = 0; i < 8; i++) *e->out++ = (char)(bits >> (8 * i)); /* little-endian */
    } else if (value == Py_None) {
        *e->out++ = VALUE_NULL;
        *e->out++ = 0; /* NULL_VALUE: written, as upb does for a oneof member */
    } else {
        put_tag_length(e, VALUE_LIST, e->items[e->next++]);
        Py_ssize_t count = PySequence_Fast_GET_SIZE(value);
        PyObject **items = PySequence_Fast_ITEMS(value);
        for (Py_ssize_t i = 0; i < count; i++) {
            put_tag_length(e, LIST_VALUES, e->items[e->next]);
            if (write_value(e, items[i]) < 0) return -1;
        }
    }
    return 0;
}


/* --- timestamps ---------------------------------------------------------- */

/* Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}



/* A Timestamp's range (timestamp.proto): 0001-01-01 to 9999-12-31 UTC. */
#define STAMP_MIN -62135596800LL
#define STAMP_MAX 253402300799LL

/* A datetime as a Timestamp: naive ones are UTC (storage.md), aware ones
 * are moved to UTC by their offset, as convert.set_timestamp does. */
int stamp(PyObject *value, Stamp *out) {
    if (!PyDateTime_Check(value)) {
        PyErr_Format(Refused, "not a datetime: %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                   PyDateTime_GET_DAY(value));
    int64_t seconds = days * 86400 + PyDateTime_DATE_GET_HOUR(value) * 3600 +
                      PyDateTime_DATE_GET_MINUTE(value) * 60 + PyDateTime_DATE_GET_SECOND(value);
    int64_t micros = PyDateTime_DATE_GET_MICROSECOND(value);
    PyObject *tzinfo = PyDateTime_DATE_GET_TZINFO(value);
    if (tzinfo != Py_None) {
        /* The tzinfo's own utcoffset, as astimezone (convert.naive_utc) asks
         * it: not the datetime's method, which a subclass may override. */
        Py_INCREF(tzinfo);
        PyObject *offset = PyObject_CallMethod(tzinfo, "utcoffset", "O", value);
        Py_DECREF(tzinfo);
        if (offset == NULL) return -1;
        /* What astimezone does not move as below (None: from local time; a
         * non-timedelta or one of a day or more: an error) is convert.py's
         * to build or refuse. Also keeps `off` below from overflowing. */
        if (!PyDelta_Check(offset) || PyDateTime_DELTA_GET_DAYS(offset) < -1 ||
            PyDateTime_DELTA_GET_DAYS(offset) > 0 ||
            (PyDateTime_DELTA_GET_DAYS(offset) == -1 &&
             PyDateTime_DELTA_GET_SECONDS(offset) == 0 &&
             PyDateTime_DELTA_GET_MICROSECONDS(offset) == 0)) {
            Py_DECREF(offset);
            PyErr_SetString(Refused, "a datetime's utcoffset() is not one astimezone takes");
            return -1;
        }
        {
            int64_t off = (int64_t)PyDateTime_DELTA_GET_DAYS(offset) * 86400000000LL +
                          (int64_t)PyDateTime_DELTA_GET_SECONDS(offset) * 1000000LL +
                          PyDateTime_DELTA_GET_MICROSECONDS(offset);
            int64_t total = seconds * 1000000LL + micros - off;
            seconds = total / 1000000LL;
            micros = total % 1000000LL;
            if (micros < 0) {
                micros += 1000000LL;
                seconds -= 1;
            }
        }
        Py_DECREF(offset);
        /* Moved out of datetime's years: astimezone raises OverflowError. */
        if (seconds < STAMP_MIN || seconds > STAMP_MAX) {
            PyErr_SetString(Refused, "a datetime outside a Timestamp's years once in UTC");
            return -1;
        }
    }
    out->seconds = seconds;
    out->nanos = (int32_t)(micros * 1000);
    /* proto3: zero fields are not written */
    out->size = (seconds ? 1 + varint_size((uint64_t)seconds) : 0) +
                (out->nanos ? 1 + varint_size((uint64_t)out->nanos) : 0);
    return 0;
}

void write_stamp(Enc *e, unsigned char tag, const Stamp *s) {
    put_tag_length(e, tag, s->size);
    if (s->seconds) {
        *e->out++ = 0x08;
        put_varint(e, (uint64_t)s->seconds); /* int64: a negative one in ten bytes */
    }
    if (s->nanos) {
        *e->out++ = 0x10;
        put_varint(e, (uint64_t)s->nanos);
    }
}


/* Checks that the passes agreed: a bug here must not send a wrong message. */
PyObject *finish(Enc *e, PyObject *bytes, Py_ssize_t total) {
    if (e->out != PyBytes_AS_STRING(bytes) + total || e->next != e->count) {
        Py_DECREF(bytes);
        PyErr_SetString(PyExc_SystemError, "_wire: the two passes disagree");
        return NULL;
    }
    return bytes;
}

PyObject *encode_value(PyObject *self, PyObject *value) {
    Enc e = {0};
    PyObject *result = NULL;
    Py_ssize_t total = measure_value(&e, value);
    if (total >= 0) {
        result = PyBytes_FromStringAndSize(NULL, total);
        if (result != NULL) {
            e.out = PyBytes_AS_STRING(result);
            if (write_value(&e, value) < 0) {
                Py_CLEAR(result);
            } else {
                result = finish(&e, result, total);
            }
        }
    }
    PyMem_Free(e.items);
    return result;
}

/* datetime's C API is a static of each file that includes datetime.h:
 * this file's stamp() reads it. */
int wire_init(void) {
    PyDateTime_IMPORT;
    return PyDateTimeAPI == NULL ? -1 : 0;
}
