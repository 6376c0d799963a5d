//! The only code generic over sqlx's driver traits: binding parameters, running a
//! statement, reading a column. Everything above it is written against [`Io`] and
//! [`Cells`], whose bounds are all here, so the statements and the row mapping need no
//! sqlx trait bounds of their own (bounds on `&mut Connection: Executor` would otherwise
//! be repeated on every generic function, and they are not implied).
//!
//! The schema needs five kinds of value: 64-bit integers, nullable integers, text, nullable
//! text and flags ([`Param`]). A flag is a `BOOLEAN` on PostgreSQL and an `INTEGER` 0/1 on SQLite; sqlx
//! encodes and decodes `bool` for both.

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::DatastoreError;

/// A value bound to a `$n` placeholder.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// `BIGINT` / `INTEGER`.
    Int(i64),
    /// `BIGINT` / `INTEGER` or `NULL`.
    OptInt(Option<i64>),
    /// `TEXT`.
    Text(&'a str),
    /// `TEXT` or `NULL`.
    OptText(Option<&'a str>),
    /// `BOOLEAN` / `INTEGER` 0 or 1.
    Flag(bool),
}

/// Typed reads of a result row's columns, by name; a value of the wrong type or a
/// missing column is a corrupt record.
pub trait Cells {
    /// A `TEXT NOT NULL` column.
    fn text(&self, column: &str) -> Result<String, DatastoreError>;
    /// A nullable `TEXT` column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, DatastoreError>;
    /// An integer column.
    fn int(&self, column: &str) -> Result<i64, DatastoreError>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, DatastoreError>;
    /// A flag column.
    fn flag(&self, column: &str) -> Result<bool, DatastoreError>;
}

fn corrupt(column: &str, e: &sqlx::Error) -> DatastoreError {
    DatastoreError::Corrupt(format!("column {column}: {e}"))
}

impl<R> Cells for R
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    fn text(&self, column: &str) -> Result<String, DatastoreError> {
        self.try_get(column).map_err(|e| corrupt(column, &e))
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, DatastoreError> {
        self.try_get(column).map_err(|e| corrupt(column, &e))
    }

    fn int(&self, column: &str) -> Result<i64, DatastoreError> {
        self.try_get(column).map_err(|e| corrupt(column, &e))
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, DatastoreError> {
        self.try_get(column).map_err(|e| corrupt(column, &e))
    }

    fn flag(&self, column: &str) -> Result<bool, DatastoreError> {
        self.try_get(column).map_err(|e| corrupt(column, &e))
    }
}

/// Running statements on a connection of a driver. Implemented once, below, for every
/// driver whose types fit the schema's four kinds of value (SQLite and PostgreSQL).
///
/// The futures are boxed and `Send` (`async_trait`), so callers generic over the driver
/// can hold them across `await` in spawned tasks without proving anything about sqlx.
#[async_trait::async_trait]
pub trait Io: Database<Row: Cells> {
    /// Runs one statement; returns the number of rows it changed.
    async fn execute(
        conn: &mut Self::Connection,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<u64, sqlx::Error>;
    /// Runs one query; returns every row.
    async fn fetch_all(
        conn: &mut Self::Connection,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Self::Row>, sqlx::Error>;
    /// Runs one query; returns its first row, if any.
    async fn fetch_optional(
        conn: &mut Self::Connection,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Self::Row>, sqlx::Error>;
    /// Runs a script of several statements without parameters (a migration).
    async fn execute_script(conn: &mut Self::Connection, sql: &str) -> Result<(), sqlx::Error>;
}

/// `sql` with `params` bound in order to `$1`, `$2`, ...
fn bind<'q, DB>(sql: &'q str, params: &[Param<'q>]) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    params.iter().fold(sqlx::query(sql), |q, p| match *p {
        Param::Int(v) => q.bind(v),
        Param::OptInt(v) => q.bind(v),
        Param::Text(v) => q.bind(v),
        Param::OptText(v) => q.bind(v),
        Param::Flag(v) => q.bind(v),
    })
}

/// How many rows a statement changed (sqlx has no trait for it).
pub trait RowsAffected {
    /// The count.
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        Self::rows_affected(self)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        Self::rows_affected(self)
    }
}

#[async_trait::async_trait]
impl<DB> Io for DB
where
    DB: Database<Row: Cells, QueryResult: RowsAffected>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
{
    async fn execute(
        conn: &mut DB::Connection,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<u64, sqlx::Error> {
        let done = bind::<DB>(sql, params).execute(conn).await?;
        Ok(done.rows_affected())
    }

    async fn fetch_all(
        conn: &mut DB::Connection,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<DB::Row>, sqlx::Error> {
        bind::<DB>(sql, params).fetch_all(conn).await
    }

    async fn fetch_optional(
        conn: &mut DB::Connection,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<DB::Row>, sqlx::Error> {
        bind::<DB>(sql, params).fetch_optional(conn).await
    }

    async fn execute_script(conn: &mut DB::Connection, sql: &str) -> Result<(), sqlx::Error> {
        <&mut DB::Connection as Executor<'_>>::execute(conn, sqlx::raw_sql(sql))
            .await
            .map(|_| ())
    }
}
