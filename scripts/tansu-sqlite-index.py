#!/usr/bin/env python3
"""Gives Tansu 0.6's SQLite storage the index its `header` table lacks. Run before the broker
starts on the database (it may not exist yet): `tansu-sqlite-index.py DIR/tansu.db`.

Tansu reads a fetched message's headers with `header_fetch.sql`, which joins `header` on
(topition, offset_id); without an index SQLite scans every header row of the broker for every
message fetched. transferd puts two headers on each transfer, so without the index
settlement's fetches cost time in proportion to the whole log, until the broker is saturated
and acknowledgements slow down with every transfer written.

Tansu creates its schema with `create table if not exists` at every start and ignores what
already exists, so the table is created here with Tansu's own definition when it is missing,
and the index added to it; both steps do nothing on a database that has them.
"""

import sqlite3
import sys

HEADER_TABLE = """
create table if not exists header (
    topition integer,
    offset_id integer,
    k blob,
    v blob,
    last_updated datetime default current_timestamp not null,
    created_at datetime default current_timestamp not null,
    foreign key (topition, offset_id) references record (topition, offset_id) on delete cascade
)
"""

HEADER_INDEX = """
create index if not exists transferd_header_record on header (topition, offset_id)
"""


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} DATABASE", file=sys.stderr)
        return 2
    connection = sqlite3.connect(sys.argv[1], timeout=30)
    try:
        connection.execute(HEADER_TABLE)
        connection.execute(HEADER_INDEX)
        connection.commit()
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
