/* A run row, with its tasks' and its version's bytes, as a Run message. */

#include "wire.h"


/* A run row's columns, in store.statements.RUN_COLUMNS' order (api/wire.py
 * checks that order, and the fields' numbers, at import). */
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

static void put_run_text(Enc *e, int i, const char **data, const Py_ssize_t *lengths) {
    if (lengths[i] > 0 || (lengths[i] == 0 && RUN_TEXTS[i].optional)) {
        put_text(e, RUN_TEXTS[i].tag, data[i], lengths[i]);
    }
}

PyObject *encode_run(PyObject *self, PyObject *args) {
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
    PyObject *seq = own_row(row);
    if (seq == NULL) return NULL;
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
        Py_ssize_t inner = measure_struct(&e, inputs);
        if (inner < 0) goto done;
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
