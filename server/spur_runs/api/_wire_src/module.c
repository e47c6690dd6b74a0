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
 * (tests/unit/test_wire.py): every input parses to the message that
 * api/convert.py builds. On any input it does not handle as convert.py
 * does (a number no double holds, a lone surrogate, a subworkflow that is
 * not a JSON object, a value that is not JSON, a row of the wrong shape),
 * it raises (Refused), and api/wire.py has convert.py build that run as
 * messages instead, which says what is wrong (DataLoss) or serves it.
 *
 * Two passes over the same objects, with no Python code run between them:
 * the first measures every length-delimited part (kept in pre-order), the
 * second writes into a bytes object of exactly the measured size. Python
 * code does run before them (a tzinfo's utcoffset, a finalizer run by the
 * GC), and may
 * change any list or dict it reaches: so every row is first made a tuple
 * of our own (its columns then live as long as the call), every object
 * whose UTF-8 is kept is held by a reference, and no JSON value is
 * measured before the last of that code has run (encode_tasks' first
 * loop). Otherwise a list grown in between is written past the bytes'
 * end, and a str freed in between is read after its free.
 *
 * The schema it writes (field numbers, wire types) is run.proto's Task and
 * struct.proto's Value, Struct and ListValue; api/wire.py checks the numbers
 * against the generated descriptors at import (_WIRE_LAYOUT, _RUN_LAYOUT).
 */

#include "wire.h"

PyObject *Refused;

PyDoc_STRVAR(encode_tasks_doc,
             "encode_tasks(rows, node_types, downstream, statuses) -> bytes\n\n"
             "Each task row (store.statements.TASK_COLUMNS' order) as a Run's tasks\n"
             "field (10): tag, length, the Task's bytes. node_types: node id -> type\n"
             "(a dict); downstream: the node ids downstream of a pause (a set or\n"
             "frozenset); statuses: the row statuses by Task.Status number (a tuple,\n"
             "None where a number has none), compared by identity.");

PyDoc_STRVAR(encode_run_doc,
             "encode_run(row, status, version, tasks, task_count, percentage, duration)\n"
             "-> (bytes, int)\n\n"
             "A Run message's bytes: the row's columns (store.statements.RUN_COLUMNS'\n"
             "order) and the values computed from other rows: status (a Run.Status\n"
             "number), version (the workflow_version field's bytes, or None), tasks\n"
             "(Run.tasks fields, encode_tasks'), task_count, percentage (0.0: not\n"
             "written) and duration (None: not written). The int is where the\n"
             "version starts (or would): the bytes before it are fields 1 to 3.");

PyDoc_STRVAR(encode_value_doc,
             "encode_value(value) -> bytes\n\n"
             "A JSON value (what orjson.loads returns) as google.protobuf.Value bytes.");

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
    if (wire_init() < 0) return NULL;
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
