-- The schema PySpur 0.1.5 leaves on PostgreSQL: its own Alembic revisions 000 to 006
-- (pyspur/models/management/alembic/versions, the chain `pyspur serve` runs there), as
-- Alembic's offline mode writes them (`upgrade head --sql`, dialect postgresql), unchanged
-- below this header but for trailing spaces and the STORED of the computed ids (SQLAlchemy
-- renders it online for PostgreSQL before 18; offline it cannot see the server's version).
-- PySpur 0.1.6 and 0.1.7 stop at 007, 0.1.8 to 0.1.13 at 009, 0.1.14 to 0.1.18 at 010;
-- 0.1.5 is the oldest release checked. What it lacks that 0.1.18's has: PAUSED in
-- runstatus and taskstatus (007), the users, sessions and messages tables (008, 009) and
-- indexes on time columns (010); its runs and tasks have every column.
-- tests/support/pyspur_peer.py loads it (pyspur_0_1_5_schema); PySpur 0.1.18's own
-- revisions then bring it forward, as upgrading PySpur does.
BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 000

CREATE TABLE datasets (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('DS' || _intid) STORED NOT NULL,
    name VARCHAR NOT NULL,
    description VARCHAR,
    file_path VARCHAR NOT NULL,
    uploaded_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (_intid),
    UNIQUE (_intid),
    UNIQUE (id),
    UNIQUE (name)
);

CREATE TYPE evalrunstatus AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED');

CREATE TABLE eval_runs (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('ER' || _intid) STORED NOT NULL,
    eval_name VARCHAR NOT NULL,
    workflow_id VARCHAR NOT NULL,
    status evalrunstatus NOT NULL,
    output_variable VARCHAR NOT NULL,
    num_samples INTEGER NOT NULL,
    start_time TIMESTAMP WITHOUT TIME ZONE,
    end_time TIMESTAMP WITHOUT TIME ZONE,
    results JSON,
    PRIMARY KEY (_intid),
    UNIQUE (id)
);

CREATE TABLE output_files (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('OF' || _intid) STORED NOT NULL,
    file_name VARCHAR NOT NULL,
    file_path VARCHAR NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (_intid),
    UNIQUE (id)
);

CREATE TABLE workflows (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('S' || _intid) STORED NOT NULL,
    name VARCHAR NOT NULL,
    description VARCHAR,
    definition JSON NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (_intid),
    UNIQUE (id),
    UNIQUE (name)
);

CREATE TABLE workflow_versions (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('SV' || _intid) STORED NOT NULL,
    version INTEGER NOT NULL,
    workflow_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    description VARCHAR,
    definition JSON NOT NULL,
    definition_hash VARCHAR NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (_intid),
    FOREIGN KEY(workflow_id) REFERENCES workflows (id),
    UNIQUE (id)
);

CREATE UNIQUE INDEX ix_workflow_versions_version ON workflow_versions (version);

CREATE INDEX ix_workflow_versions_workflow_id ON workflow_versions (workflow_id);

CREATE TYPE runstatus AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED');

CREATE TABLE runs (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('R' || _intid) STORED NOT NULL,
    workflow_id VARCHAR NOT NULL,
    workflow_version_id VARCHAR NOT NULL,
    parent_run_id VARCHAR,
    status runstatus NOT NULL,
    run_type VARCHAR NOT NULL,
    initial_inputs JSON,
    input_dataset_id VARCHAR,
    start_time TIMESTAMP WITHOUT TIME ZONE,
    end_time TIMESTAMP WITHOUT TIME ZONE,
    outputs JSON,
    output_file_id VARCHAR,
    PRIMARY KEY (_intid),
    FOREIGN KEY(input_dataset_id) REFERENCES datasets (id),
    FOREIGN KEY(output_file_id) REFERENCES output_files (id),
    FOREIGN KEY(parent_run_id) REFERENCES runs (id),
    FOREIGN KEY(workflow_id) REFERENCES workflows (id),
    FOREIGN KEY(workflow_version_id) REFERENCES workflow_versions (id),
    UNIQUE (id)
);

CREATE INDEX ix_runs_input_dataset_id ON runs (input_dataset_id);

CREATE INDEX ix_runs_parent_run_id ON runs (parent_run_id);

CREATE INDEX ix_runs_workflow_id ON runs (workflow_id);

CREATE INDEX ix_runs_workflow_version_id ON runs (workflow_version_id);

CREATE TYPE taskstatus AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED');

CREATE TABLE tasks (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('T' || _intid) STORED NOT NULL,
    run_id VARCHAR NOT NULL,
    node_id VARCHAR NOT NULL,
    parent_task_id VARCHAR,
    status taskstatus NOT NULL,
    inputs JSON,
    outputs JSON,
    start_time TIMESTAMP WITHOUT TIME ZONE,
    end_time TIMESTAMP WITHOUT TIME ZONE,
    subworkflow JSON,
    subworkflow_output JSON,
    PRIMARY KEY (_intid),
    FOREIGN KEY(parent_task_id) REFERENCES tasks (id),
    FOREIGN KEY(run_id) REFERENCES runs (id),
    UNIQUE (id)
);

INSERT INTO alembic_version (version_num) VALUES ('000') RETURNING alembic_version.version_num;

-- Running upgrade 000 -> 001

DROP INDEX ix_workflow_versions_version;

CREATE INDEX ix_workflow_versions_version ON workflow_versions (version);

UPDATE alembic_version SET version_num='001' WHERE alembic_version.version_num = '000';

-- Running upgrade 001 -> 002

CREATE TABLE knowledge_bases (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('KB' || _intid) STORED NOT NULL,
    name VARCHAR NOT NULL,
    description VARCHAR,
    status VARCHAR NOT NULL,
    document_count INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    error_message VARCHAR,
    text_processing_config JSON NOT NULL,
    embedding_config JSON NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (_intid),
    UNIQUE (id),
    UNIQUE (name)
);

UPDATE alembic_version SET version_num='002' WHERE alembic_version.version_num = '001';

-- Running upgrade 002 -> 003

CREATE TABLE document_collections (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('DC' || _intid) STORED NOT NULL,
    name VARCHAR NOT NULL,
    description VARCHAR,
    status VARCHAR NOT NULL,
    document_count INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    error_message VARCHAR,
    text_processing_config JSON NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (_intid),
    UNIQUE (id),
    UNIQUE (name)
);

CREATE TABLE vector_indices (
    _intid SERIAL NOT NULL,
    id VARCHAR GENERATED ALWAYS AS ('VI' || _intid) STORED NOT NULL,
    name VARCHAR NOT NULL,
    description VARCHAR,
    status VARCHAR NOT NULL,
    document_count INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    error_message VARCHAR,
    embedding_config JSON NOT NULL,
    collection_id VARCHAR NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (_intid),
    FOREIGN KEY(collection_id) REFERENCES document_collections (id),
    UNIQUE (id),
    UNIQUE (name)
);

DROP TABLE knowledge_bases;

UPDATE alembic_version SET version_num='003' WHERE alembic_version.version_num = '002';

-- Running upgrade 003 -> 004

CREATE TABLE processing_progress (
    id VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    progress FLOAT NOT NULL,
    current_step VARCHAR NOT NULL,
    total_files INTEGER NOT NULL,
    processed_files INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    processed_chunks INTEGER NOT NULL,
    error_message VARCHAR,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (id)
);

UPDATE alembic_version SET version_num='004' WHERE alembic_version.version_num = '003';

-- Running upgrade 004 -> 005

ALTER TABLE processing_progress RENAME TO document_processing_progress;

UPDATE alembic_version SET version_num='005' WHERE alembic_version.version_num = '004';

-- Running upgrade 005 -> 006

COMMENT ON COLUMN document_collections.text_processing_config IS 'Configuration for text processing including: chunk_token_size, min_chunk_size_chars, etc.';

ALTER TABLE tasks ADD COLUMN error VARCHAR;

COMMENT ON COLUMN vector_indices.embedding_config IS 'Configuration for embeddings including: model, dimensions, batch_size, etc.';

ALTER TYPE taskstatus ADD VALUE IF NOT EXISTS 'CANCELED';

UPDATE alembic_version SET version_num='006' WHERE alembic_version.version_num = '005';

COMMIT;

