/* Task rows and JSON values to protobuf wire bytes, in C.
 *
 * Why this exists (docs/performance.md, "Twenty-seventh step"): building a
 * GetRun's or a list page's Task messages field by field through upb's
 * Python API was the largest part of the read's own work (a Python wrapper
 * made for every Value, Struct and Timestamp touched). This module writes
 * the same messages' bytes directly: the server splices them into the
 * response's bytes (api/spliced.py), and the gateway parses them back
 * (MergeFromString) where it needs messages.
 *
 * What it writes is checked against upb's own encoding by the tests
 * (tests/unit/api/test_wire.py): every input parses to the message that
 * api/convert.py builds. On any input it does not handle as convert.py
 * does (a number no double holds, a lone surrogate, a subworkflow that is
 * not a JSON object, a value that is not JSON, a row of the wrong shape),
 * it raises, and convert.py builds those tasks as messages instead, which
 * says what is wrong (DataLoss).
 *
 * Two passes over the same objects, with no Python code run between them:
 * the first measures every length-delimited part (kept in pre-order), the
 * second writes into a bytes object of exactly the measured size. Python
 * code does run before them (a status's Enum.__hash__, a tzinfo's
 * utcoffset, a str subclass's __eq__, a finalizer run by the GC), and may
 * change any list or dict it reaches: so every row is first made a tuple
 * of our own (its columns then live as long as the call), every object
 * whose UTF-8 is kept is held by a reference, and no JSON value is
 * measured before the last of that code has run (encode_tasks' first
 * loop). Otherwise a list grown in between is written past the bytes'
 * end, and a str freed in between is read after its free.
 *
 * The schema it writes (field numbers, wire types) is run.proto's Task and
 * struct.proto's Value, Struct and ListValue; convert.py checks the numbers
 * against the generated descriptors at import (_wire_layout below).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

/* What this module does not write as api/convert.py would: a value that is
 * not JSON, a column of another type, a row of another shape, JSON nested
 * past MAX_DEPTH. convert.py builds those as messages instead, which says
 * what is wrong (DataLoss) or serves them. (OverflowError and
 * UnicodeEncodeError, raised by CPython's conversions, mean the same.)
 * Any other error is a bug, and is not caught. */
static PyObject *Refused;

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

static int enter(Enc *e) {
    if (++e->depth > MAX_DEPTH) {
        e->depth--;
        PyErr_SetString(Refused, "a JSON value nested too deeply for _wire");
        return -1;
    }
    return 0;
}

static Py_ssize_t reserve(Enc *e) {
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

static int text(PyObject *value, const char **data, Py_ssize_t *size) {
    /* UTF-8, cached in the str object by CPython: the second pass reads the
     * same buffer. A lone surrogate raises UnicodeEncodeError, as upb does. */
    *data = PyUnicode_AsUTF8AndSize(value, size);
    return *data == NULL ? -1 : 0;
}

static Py_ssize_t measure_value(Enc *e, PyObject *value);
static int write_value(Enc *e, PyObject *value);

/* Only dict, list, tuple and int themselves (orjson's and json's types),
 * not their subclasses: convert.py reads a subclass of dict through its
 * items(), of list and tuple by iterating it, of int through __float__
 * (upb's number_value), any of which a subclass may override. Those are
 * convert.py's to write. (bool is int's subclass, handled before.) */
static int refuse_subclass(PyObject *value) {
    PyErr_Format(Refused, "a %.100s, not one of JSON's own types", Py_TYPE(value)->tp_name);
    return -1;
}

/* The entries of a Struct holding dict `value`: their size. */
static Py_ssize_t measure_fields(Enc *e, PyObject *value) {
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

static int write_fields(Enc *e, PyObject *value) {
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
static Py_ssize_t measure_value(Enc *e, PyObject *value) {
    Py_ssize_t slot = reserve(e);
    if (slot < 0) return -1;
    Py_ssize_t size;
    if (PyUnicode_Check(value)) {
        const char *data;
        Py_ssize_t length;
        if (text(value, &data, &length) < 0) return -1;
        size = delimited(length);
    } else if (PyDict_Check(value)) {
        if (enter(e) < 0) return -1;
        Py_ssize_t inner_slot = reserve(e);
        Py_ssize_t inner = inner_slot < 0 ? -1 : measure_fields(e, value);
        e->depth--;
        if (inner < 0) return -1;
        e->items[inner_slot] = inner;
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

static int write_value(Enc *e, PyObject *value) {
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

typedef struct {
    int64_t seconds;
    int32_t nanos;
    Py_ssize_t size; /* the Timestamp message's size */
} Stamp;

/* A Timestamp's range (timestamp.proto): 0001-01-01 to 9999-12-31 UTC. */
#define STAMP_MIN -62135596800LL
#define STAMP_MAX 253402300799LL

/* A datetime as a Timestamp: naive ones are UTC (storage.md), aware ones
 * are moved to UTC by their offset, as convert.set_timestamp does. */
static int stamp(PyObject *value, Stamp *out) {
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

static void write_stamp(Enc *e, unsigned char tag, const Stamp *s) {
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

/* --- tasks --------------------------------------------------------------- */

/* A task row's columns, in store.statements.TASK_COLUMNS' order (convert.py
 * checks that order at import). */
enum {
    COL_ID = 1,
    COL_RUN_ID = 2,
    COL_NODE_ID = 3,
    COL_PARENT_TASK_ID = 4,
    COL_STATUS = 5,
    COL_INPUTS = 6,
    COL_OUTPUTS = 7,
    COL_ERROR = 8,
    COL_START_TIME = 9,
    COL_END_TIME = 10,
    COL_SUBWORKFLOW = 11,
    COL_SUBWORKFLOW_OUTPUT = 12,
    TASK_COLUMNS = 13,
};

/* Run.tasks (10) and Task's fields (run.proto) */
#define RUN_TASKS 0x52
#define TASK_ID 0x0A
#define TASK_RUN_ID 0x12
#define TASK_NODE_ID 0x1A
#define TASK_NODE_TYPE 0x22
#define TASK_STATUS 0x28
#define TASK_START_TIME 0x32
#define TASK_END_TIME 0x3A
#define TASK_INPUTS 0x42
#define TASK_OUTPUTS 0x4A
#define TASK_ERROR 0x52
#define TASK_DOWNSTREAM 0x58
#define TASK_PARENT_TASK_ID 0x62
#define TASK_SUBWORKFLOW 0x6A
#define TASK_SUBWORKFLOW_OUTPUT 0x72

typedef struct {
    PyObject *row; /* a new reference: the row, as a tuple */
    PyObject *node_type; /* a new reference, or NULL: strings[3] is its UTF-8 */
    const char *strings[5];
    Py_ssize_t lengths[5]; /* id, run_id, node_id, node_type, error or -1 */
    const char *parent;
    Py_ssize_t parent_length; /* -1: None */
    long status;
    int downstream;
    Stamp start, end;
    int has_start, has_end;
    Py_ssize_t size;
} Task;

static int required_text(PyObject *value, const char **data, Py_ssize_t *size) {
    if (!PyUnicode_Check(value)) {
        PyErr_Format(Refused, "a task's id is not a string: %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    return text(value, data, size);
}

static Py_ssize_t optional_text(PyObject *value, const char **data) {
    if (value == Py_None) return -1;
    Py_ssize_t size;
    if (required_text(value, data, &size) < 0) return -2;
    return size;
}

/* The size of a proto3 string field that is written only when not empty. */
static inline Py_ssize_t implicit_text(Py_ssize_t length) {
    return length ? delimited(length) : 0;
}

static Py_ssize_t measure_task(Task *t, PyObject *node_types, PyObject *downstream,
                               PyObject *statuses) {
    PyObject **c = PySequence_Fast_ITEMS(t->row);
    Py_ssize_t size = 0;
    for (int i = 0; i < 3; i++) { /* id, run_id, node_id */
        if (required_text(c[COL_ID + i], &t->strings[i], &t->lengths[i]) < 0) return -1;
        size += implicit_text(t->lengths[i]);
    }
    PyObject *node_id = c[COL_NODE_ID];
    PyObject *node_type = PyDict_GetItemWithError(node_types, node_id); /* borrowed */
    if (node_type == NULL && PyErr_Occurred()) return -1;
    if (node_type == NULL) {
        t->strings[3] = "";
        t->lengths[3] = 0;
    } else {
        /* held: the status's lookup below (Python code) may empty node_types */
        Py_INCREF(node_type);
        t->node_type = node_type;
        if (required_text(node_type, &t->strings[3], &t->lengths[3]) < 0) return -1;
    }
    size += implicit_text(t->lengths[3]);

    /* The status's number is its index in `statuses`, found by identity:
     * an Enum's hash is Python code (a dict lookup ran it for every task). */
    t->status = -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(statuses); i++) {
        if (PyTuple_GET_ITEM(statuses, i) == c[COL_STATUS] && c[COL_STATUS] != Py_None) {
            t->status = (long)i;
            break;
        }
    }
    if (t->status < 0) {
        PyErr_SetString(Refused, "a task's status is unknown");
        return -1;
    }
    if (t->status) size += 1 + varint_size((uint64_t)t->status);

    t->downstream = 0;
    if (PySet_GET_SIZE(downstream)) {
        t->downstream = PySet_Contains(downstream, node_id);
        if (t->downstream < 0) return -1;
        if (t->downstream) size += 2;
    }
    t->has_start = c[COL_START_TIME] != Py_None;
    if (t->has_start) {
        if (stamp(c[COL_START_TIME], &t->start) < 0) return -1;
        size += delimited(t->start.size);
    }
    t->has_end = c[COL_END_TIME] != Py_None;
    if (t->has_end) {
        if (stamp(c[COL_END_TIME], &t->end) < 0) return -1;
        size += delimited(t->end.size);
    }
    t->lengths[4] = optional_text(c[COL_ERROR], &t->strings[4]);
    if (t->lengths[4] == -2) return -1;
    if (t->lengths[4] >= 0) size += delimited(t->lengths[4]); /* optional: even "" */
    t->parent_length = optional_text(c[COL_PARENT_TASK_ID], &t->parent);
    if (t->parent_length == -2) return -1;
    if (t->parent_length >= 0) size += delimited(t->parent_length);
    t->size = size;
    return size;
}

/* The rest of a task's size: its JSON columns, measured only once no more
 * Python code is to run (measure_task's may change any of them). */
static Py_ssize_t measure_documents(Enc *e, Task *t) {
    PyObject **c = PySequence_Fast_ITEMS(t->row);
    Py_ssize_t size = t->size;
    /* inputs, outputs: Values; subworkflow: a Struct; subworkflow_output: a Value */
    if (c[COL_INPUTS] != Py_None) {
        Py_ssize_t inner = measure_value(e, c[COL_INPUTS]);
        if (inner < 0) return -1;
        size += delimited(inner);
    }
    if (c[COL_OUTPUTS] != Py_None) {
        Py_ssize_t inner = measure_value(e, c[COL_OUTPUTS]);
        if (inner < 0) return -1;
        size += delimited(inner);
    }
    PyObject *subworkflow = c[COL_SUBWORKFLOW];
    if (subworkflow != Py_None) {
        if (!PyDict_Check(subworkflow)) {
            /* convert.py says so (DataLoss) */
            PyErr_SetString(Refused, "a task's subworkflow is not a JSON object");
            return -1;
        }
        if (enter(e) < 0) return -1;
        Py_ssize_t slot = reserve(e);
        Py_ssize_t inner = slot < 0 ? -1 : measure_fields(e, subworkflow);
        e->depth--;
        if (inner < 0) return -1;
        e->items[slot] = inner;
        size += delimited(inner);
    }
    if (c[COL_SUBWORKFLOW_OUTPUT] != Py_None) {
        Py_ssize_t inner = measure_value(e, c[COL_SUBWORKFLOW_OUTPUT]);
        if (inner < 0) return -1;
        size += delimited(inner);
    }
    t->size = size;
    return size;
}

static void put_text(Enc *e, unsigned char tag, const char *data, Py_ssize_t size) {
    put_tag_length(e, tag, size);
    put_bytes(e, data, size);
}

static int write_task(Enc *e, const Task *t) {
    PyObject **c = PySequence_Fast_ITEMS(t->row);
    static const unsigned char tags[4] = {TASK_ID, TASK_RUN_ID, TASK_NODE_ID, TASK_NODE_TYPE};
    put_tag_length(e, RUN_TASKS, t->size);
    for (int i = 0; i < 4; i++) {
        if (t->lengths[i]) put_text(e, tags[i], t->strings[i], t->lengths[i]);
    }
    if (t->status) {
        *e->out++ = TASK_STATUS;
        put_varint(e, (uint64_t)t->status);
    }
    if (t->has_start) write_stamp(e, TASK_START_TIME, &t->start);
    if (t->has_end) write_stamp(e, TASK_END_TIME, &t->end);
    if (c[COL_INPUTS] != Py_None) {
        put_tag_length(e, TASK_INPUTS, e->items[e->next]);
        if (write_value(e, c[COL_INPUTS]) < 0) return -1;
    }
    if (c[COL_OUTPUTS] != Py_None) {
        put_tag_length(e, TASK_OUTPUTS, e->items[e->next]);
        if (write_value(e, c[COL_OUTPUTS]) < 0) return -1;
    }
    if (t->lengths[4] >= 0) put_text(e, TASK_ERROR, t->strings[4], t->lengths[4]);
    if (t->downstream) {
        *e->out++ = TASK_DOWNSTREAM;
        *e->out++ = 1;
    }
    if (t->parent_length >= 0) put_text(e, TASK_PARENT_TASK_ID, t->parent, t->parent_length);
    if (c[COL_SUBWORKFLOW] != Py_None) {
        put_tag_length(e, TASK_SUBWORKFLOW, e->items[e->next++]);
        if (write_fields(e, c[COL_SUBWORKFLOW]) < 0) return -1;
    }
    if (c[COL_SUBWORKFLOW_OUTPUT] != Py_None) {
        put_tag_length(e, TASK_SUBWORKFLOW_OUTPUT, e->items[e->next]);
        if (write_value(e, c[COL_SUBWORKFLOW_OUTPUT]) < 0) return -1;
    }
    return 0;
}

/* Checks that the passes agreed: a bug here must not send a wrong message. */
static PyObject *finish(Enc *e, PyObject *bytes, Py_ssize_t total) {
    if (e->out != PyBytes_AS_STRING(bytes) + total || e->next != e->count) {
        Py_DECREF(bytes);
        PyErr_SetString(PyExc_SystemError, "_wire: the two passes disagree");
        return NULL;
    }
    return bytes;
}

PyDoc_STRVAR(encode_tasks_doc,
             "encode_tasks(rows, node_types, downstream, statuses) -> bytes\n\n"
             "Each task row (store.statements.TASK_COLUMNS' order) as a Run's tasks\n"
             "field (10): tag, length, the Task's bytes. node_types: node id -> type\n"
             "(a dict); downstream: the node ids downstream of a pause (a set or\n"
             "frozenset); statuses: the row statuses by Task.Status number (a tuple,\n"
             "None where a number has none), compared by identity.");

static PyObject *encode_tasks(PyObject *self, PyObject *args) {
    PyObject *rows, *node_types, *downstream, *statuses;
    if (!PyArg_ParseTuple(args, "OO!O!O!:encode_tasks", &rows, &PyDict_Type, &node_types,
                          &PyFrozenSet_Type, &downstream, &PyTuple_Type, &statuses)) {
        return NULL;
    }
    /* a tuple: a list of rows could be emptied by Python code on the way */
    PyObject *seq = PySequence_Tuple(rows);
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Task *tasks = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Task));
    Enc e = {0};
    PyObject *result = NULL;
    Py_ssize_t total = 0, made = 0;
    if (tasks == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; made < count; made++) {
        Task *t = &tasks[made];
        PyObject *row = items[made];
        if (PyTuple_Check(row)) {
            /* store.hot's rows are tuples of a subclass, which PySequence_Tuple
             * would copy */
            Py_INCREF(row);
            t->row = row;
        } else {
            /* a copy: a list row could be changed by Python code on the way */
            t->row = PySequence_Tuple(row);
            if (t->row == NULL) goto done;
        }
        if (PySequence_Fast_GET_SIZE(t->row) != TASK_COLUMNS) {
            Py_DECREF(t->row);
            t->row = NULL;
            PyErr_SetString(Refused, "a task row must have 13 columns");
            goto done;
        }
        if (measure_task(t, node_types, downstream, statuses) < 0) {
            made++; /* its row is released below */
            goto done;
        }
    }
    /* No Python code runs from here on (see the header). */
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t size = measure_documents(&e, &tasks[i]);
        if (size < 0) goto done;
        total += delimited(size);
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) goto done;
    e.out = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (write_task(&e, &tasks[i]) < 0) {
            Py_CLEAR(result);
            goto done;
        }
    }
    result = finish(&e, result, total);
done:
    for (Py_ssize_t i = 0; i < made; i++) {
        Py_XDECREF(tasks[i].row);
        Py_XDECREF(tasks[i].node_type);
    }
    PyMem_Free(tasks);
    PyMem_Free(e.items);
    Py_DECREF(seq);
    return result;
}

/* --- runs --------------------------------------------------------------- */

/* A run row's columns, in store.statements.RUN_COLUMNS' order (convert.py
 * checks that order at import). */
enum {
    RUN_ID = 1,
    RUN_WORKFLOW_ID = 2,
    RUN_WORKFLOW_VERSION_ID = 3,
    RUN_PARENT_RUN_ID = 4,
    RUN_RUN_TYPE = 6,
    RUN_INITIAL_INPUTS = 7,
    RUN_INPUT_DATASET_ID = 8,
    RUN_START_TIME = 9,
    RUN_END_TIME = 10,
    RUN_OUTPUTS = 11,
    RUN_OUTPUT_FILE_ID = 12,
    RUN_COLUMNS = 14,
};

/* Run's fields (run.proto): one-byte tags, then two-byte ones from 16 on */
#define R_ID 0x0A
#define R_WORKFLOW_ID 0x12
#define R_WORKFLOW_VERSION_ID 0x1A
#define R_STATUS 0x28
#define R_START_TIME 0x32
#define R_END_TIME 0x3A
#define R_INITIAL_INPUTS 0x42
#define R_OUTPUTS 0x4A
#define R_PARENT_RUN_ID 0x5A
#define R_RUN_TYPE 0x62
#define R_OUTPUT_FILE_ID 0x6A
#define R_INPUT_DATASET_ID 0x72
/* duration (16, 64-bit), percentage_complete (17, 64-bit), task_count (18, varint) */
static const char R_DURATION[2] = {(char)0x81, 0x01};
static const char R_PERCENTAGE[2] = {(char)0x89, 0x01};
static const char R_TASK_COUNT[2] = {(char)0x90, 0x01};

/* The text columns of a run, in the order they are written, with their tags
 * and whether they are proto3 `optional` (written when not None, "" too). */
static const struct {
    int column;
    unsigned char tag;
    int optional;
} RUN_TEXTS[] = {
    {RUN_ID, R_ID, 0},
    {RUN_WORKFLOW_ID, R_WORKFLOW_ID, 0},
    {RUN_WORKFLOW_VERSION_ID, R_WORKFLOW_VERSION_ID, 1},
    /* the version (4) goes here */
    {RUN_PARENT_RUN_ID, R_PARENT_RUN_ID, 1},
    {RUN_RUN_TYPE, R_RUN_TYPE, 0},
    {RUN_OUTPUT_FILE_ID, R_OUTPUT_FILE_ID, 1},
    {RUN_INPUT_DATASET_ID, R_INPUT_DATASET_ID, 1},
};
#define RUN_TEXT_COUNT 7
#define RUN_TEXTS_BEFORE_VERSION 3

static void put_double(Enc *e, double number) {
    uint64_t bits;
    memcpy(&bits, &number, sizeof bits);
    for (int i = 0; i < 8; i++) *e->out++ = (char)(bits >> (8 * i)); /* little-endian */
}

static void put_run_text(Enc *e, int i, const char **data, const Py_ssize_t *lengths) {
    if (lengths[i] > 0 || (lengths[i] == 0 && RUN_TEXTS[i].optional)) {
        put_tag_length(e, RUN_TEXTS[i].tag, lengths[i]);
        put_bytes(e, data[i], lengths[i]);
    }
}

PyDoc_STRVAR(encode_run_doc,
             "encode_run(row, status, version, tasks, task_count, percentage, duration)\n"
             "-> (bytes, int)\n\n"
             "A Run message's bytes: the row's columns (store.statements.RUN_COLUMNS'\n"
             "order) and the values computed from other rows: status (a Run.Status\n"
             "number), version (the workflow_version field's bytes, or None), tasks\n"
             "(Run.tasks fields, encode_tasks'), task_count, percentage (0.0: not\n"
             "written) and duration (None: not written). The int is where the\n"
             "version starts (or would): the bytes before it are fields 1 to 3.");

static PyObject *encode_run(PyObject *self, PyObject *args) {
    PyObject *row, *version, *duration;
    const char *tasks;
    Py_ssize_t tasks_size;
    long status, task_count;
    double percentage;
    if (!PyArg_ParseTuple(args, "OlOy#ldO:encode_run", &row, &status, &version, &tasks,
                          &tasks_size, &task_count, &percentage, &duration)) {
        return NULL;
    }
    /* y# above refuses None for tasks; version is checked here */
    const char *version_data = NULL;
    Py_ssize_t version_size = 0;
    if (version != NULL && version != Py_None) {
        if (!PyBytes_Check(version)) {
            PyErr_SetString(PyExc_TypeError, "version must be bytes or None");
            return NULL;
        }
        version_data = PyBytes_AS_STRING(version);
        version_size = PyBytes_GET_SIZE(version);
    }
    double seconds = 0;
    int has_duration = duration != Py_None;
    if (has_duration) {
        seconds = PyFloat_AsDouble(duration);
        if (seconds == -1.0 && PyErr_Occurred()) return NULL;
    }
    PyObject *seq;
    if (PyTuple_Check(row)) {
        Py_INCREF(row);
        seq = row;
    } else {
        /* a copy: a list row could be changed by a tzinfo's utcoffset, after
         * its strings' UTF-8 is taken and before it is written */
        seq = PySequence_Tuple(row);
        if (seq == NULL) return NULL;
    }
    Enc e = {0};
    PyObject *data = NULL, *result = NULL;
    if (PySequence_Fast_GET_SIZE(seq) != RUN_COLUMNS) {
        PyErr_SetString(Refused, "a run row must have 14 columns");
        goto done;
    }
    PyObject **c = PySequence_Fast_ITEMS(seq);
    const char *texts[RUN_TEXT_COUNT];
    Py_ssize_t lengths[RUN_TEXT_COUNT];
    Py_ssize_t size = 0, cut = 0;
    for (int i = 0; i < RUN_TEXT_COUNT; i++) {
        PyObject *value = c[RUN_TEXTS[i].column];
        if (RUN_TEXTS[i].optional && value == Py_None) {
            lengths[i] = -1;
        } else {
            if (!PyUnicode_Check(value)) {
                PyErr_Format(Refused, "a run's text column holds %.100s",
                             Py_TYPE(value)->tp_name);
                goto done;
            }
            if (text(value, &texts[i], &lengths[i]) < 0) goto done;
            if (lengths[i] > 0 || RUN_TEXTS[i].optional) size += delimited(lengths[i]);
        }
        if (i == RUN_TEXTS_BEFORE_VERSION - 1) cut = size;
    }
    size += version_size;
    if (status) size += 1 + varint_size((uint64_t)status);
    Stamp start, end;
    int has_start = c[RUN_START_TIME] != Py_None, has_end = c[RUN_END_TIME] != Py_None;
    if (has_start) {
        if (stamp(c[RUN_START_TIME], &start) < 0) goto done;
        size += delimited(start.size);
    }
    if (has_end) {
        if (stamp(c[RUN_END_TIME], &end) < 0) goto done;
        size += delimited(end.size);
    }
    PyObject *inputs = c[RUN_INITIAL_INPUTS], *outputs = c[RUN_OUTPUTS];
    if (inputs != Py_None) {
        if (!PyDict_Check(inputs)) {
            /* convert.py says so (DataLoss) */
            PyErr_SetString(Refused, "a run's initial_inputs is not a JSON object");
            goto done;
        }
        if (enter(&e) < 0) goto done;
        Py_ssize_t slot = reserve(&e);
        Py_ssize_t inner = slot < 0 ? -1 : measure_fields(&e, inputs);
        e.depth--;
        if (inner < 0) goto done;
        e.items[slot] = inner;
        size += delimited(inner);
    }
    if (outputs != Py_None) {
        Py_ssize_t inner = measure_value(&e, outputs);
        if (inner < 0) goto done;
        size += delimited(inner);
    }
    size += tasks_size;
    if (has_duration) size += 10;
    if (percentage != 0.0) size += 10;
    if (task_count) size += 2 + varint_size((uint64_t)task_count);

    data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL) goto done;
    e.out = PyBytes_AS_STRING(data);
    for (int i = 0; i < RUN_TEXTS_BEFORE_VERSION; i++) put_run_text(&e, i, texts, lengths);
    if (version_size) put_bytes(&e, version_data, version_size);
    if (status) {
        *e.out++ = R_STATUS;
        put_varint(&e, (uint64_t)status);
    }
    if (has_start) write_stamp(&e, R_START_TIME, &start);
    if (has_end) write_stamp(&e, R_END_TIME, &end);
    if (inputs != Py_None) {
        put_tag_length(&e, R_INITIAL_INPUTS, e.items[e.next++]);
        if (write_fields(&e, inputs) < 0) goto done;
    }
    if (outputs != Py_None) {
        put_tag_length(&e, R_OUTPUTS, e.items[e.next]);
        if (write_value(&e, outputs) < 0) goto done;
    }
    put_bytes(&e, tasks, tasks_size);
    for (int i = RUN_TEXTS_BEFORE_VERSION; i < RUN_TEXT_COUNT; i++) {
        put_run_text(&e, i, texts, lengths);
    }
    if (has_duration) {
        put_bytes(&e, R_DURATION, 2);
        put_double(&e, seconds);
    }
    if (percentage != 0.0) {
        put_bytes(&e, R_PERCENTAGE, 2);
        put_double(&e, percentage);
    }
    if (task_count) {
        put_bytes(&e, R_TASK_COUNT, 2);
        put_varint(&e, (uint64_t)task_count);
    }
    data = finish(&e, data, size);
    if (data != NULL) result = Py_BuildValue("(Nn)", data, cut);
    data = NULL;
done:
    Py_XDECREF(data);
    PyMem_Free(e.items);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(encode_value_doc,
             "encode_value(value) -> bytes\n\n"
             "A JSON value (what orjson.loads returns) as google.protobuf.Value bytes.");

static PyObject *encode_value(PyObject *self, PyObject *value) {
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

static PyMethodDef methods[] = {
    {"encode_tasks", encode_tasks, METH_VARARGS, encode_tasks_doc},
    {"encode_run", encode_run, METH_VARARGS, encode_run_doc},
    {"encode_value", encode_value, METH_O, encode_value_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "spur_runs.api._wire",
    "Task rows and JSON values to protobuf wire bytes (see the C source's header).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__wire(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Refused = PyErr_NewExceptionWithDoc(
        "spur_runs.api._wire.Refused",
        "A value or row this module does not write as api/convert.py would.", PyExc_ValueError,
        NULL);
    if (Refused == NULL || PyModule_AddObjectRef(m, "Refused", Refused) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
