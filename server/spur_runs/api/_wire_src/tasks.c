/* Task rows as a Run's tasks fields (run.proto's Task). */

#include "wire.h"


/* A task row's columns, in store.statements.TASK_COLUMNS' order (convert.py
 * checks that order at import, api/wire.py the fields' numbers). */
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
        Py_ssize_t inner = measure_struct(e, subworkflow);
        if (inner < 0) return -1;
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


PyObject *encode_tasks(PyObject *self, PyObject *args) {
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
        t->row = own_row(items[made]);
        if (t->row == NULL) goto done;
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
