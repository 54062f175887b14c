// Reads a Parquet file with DuckDB and prints its rows as JSON Lines:
// an independent reader of inferq's Parquet output, for the tests.
import { DuckDBInstance } from '@duckdb/node-api';
const file = process.argv[2];
const db = await DuckDBInstance.create(':memory:');
const con = await db.connect();
const reader = await con.runAndReadAll(`SELECT * FROM read_parquet('${file.replaceAll("'", "''")}') ORDER BY line`);
const types = reader.columnNames().map((n, i) => [n, reader.columnType(i).toString()]);
console.log(JSON.stringify({ columns: Object.fromEntries(types) }));
for (const row of reader.getRowObjectsJson()) console.log(JSON.stringify(row));
