//! A directory of parquet shards: writing them, opening them (metadata only) and reading
//! selected rows of one row group with column projection. Nothing here holds more than
//! the requested rows of one row group in memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;

use crate::error::{DataError, Result};
use crate::sample::Sample;
use crate::schema::{batch_to_samples, col, conform, sample_schema, samples_to_batch};

/// Writes samples into `DIR/{prefix}-{NNNNN}.parquet`, `rows_per_file` rows per shard and
/// `rows_per_row_group` rows per row group. Each shard is written to a hidden temporary
/// file and renamed when complete, so a killed writer never leaves a shard that looks whole.
pub struct ShardWriter {
    dir: PathBuf,
    prefix: String,
    rows_per_file: usize,
    rows_per_row_group: usize,
    pending: Vec<Sample>,
    current: Option<(ArrowWriter<File>, PathBuf, PathBuf, usize)>,
    next_index: usize,
    written: Vec<PathBuf>,
}

impl ShardWriter {
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        Ok(Self {
            dir,
            prefix: prefix.to_string(),
            rows_per_file: 2048,
            rows_per_row_group: 64,
            pending: Vec::new(),
            current: None,
            next_index: 0,
            written: Vec::new(),
        })
    }

    pub fn rows_per_file(mut self, n: usize) -> Self {
        self.rows_per_file = n.max(1);
        self
    }

    pub fn rows_per_row_group(mut self, n: usize) -> Self {
        self.rows_per_row_group = n.max(1);
        self
    }

    pub fn write(&mut self, sample: Sample) -> Result<()> {
        self.pending.push(sample);
        if self.pending.len() >= self.rows_per_row_group {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<()> {
        while !self.pending.is_empty() {
            if self.current.is_none() {
                let name = format!("{}-{:05}.parquet", self.prefix, self.next_index);
                self.next_index += 1;
                let final_path = self.dir.join(&name);
                let tmp_path = self.dir.join(format!(".{name}.tmp"));
                let file = File::create(&tmp_path).map_err(|e| DataError::io(&tmp_path, e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(self.rows_per_row_group))
                    .build();
                let writer = ArrowWriter::try_new(file, sample_schema(), Some(props))
                    .map_err(|e| DataError::write(&tmp_path, e))?;
                self.current = Some((writer, tmp_path, final_path, 0));
            }
            let (writer, tmp_path, _, rows) = self.current.as_mut().expect("opened above");
            let room = (self.rows_per_file - *rows).min(self.rows_per_row_group);
            let take = room.min(self.pending.len());
            let chunk: Vec<Sample> = self.pending.drain(..take).collect();
            let batch = samples_to_batch(&chunk).map_err(|e| DataError::write(&*tmp_path, e))?;
            writer.write(&batch).map_err(|e| DataError::write(&*tmp_path, e))?;
            writer.flush().map_err(|e| DataError::write(&*tmp_path, e))?;
            *rows += take;
            if *rows >= self.rows_per_file {
                self.close_file()?;
            }
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        if let Some((writer, tmp_path, final_path, _)) = self.current.take() {
            writer.close().map_err(|e| DataError::write(&tmp_path, e))?;
            std::fs::rename(&tmp_path, &final_path).map_err(|e| DataError::io(&final_path, e))?;
            self.written.push(final_path);
        }
        Ok(())
    }

    /// Flushes the last row group, closes the shard and returns the files written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        self.flush_row_group()?;
        self.close_file()?;
        Ok(std::mem::take(&mut self.written))
    }
}

/// One parquet file of a shard set: its path, parsed footer and row-group sizes.
pub struct Shard {
    pub path: PathBuf,
    metadata: ArrowReaderMetadata,
    /// Rows in each row group.
    pub row_groups: Vec<usize>,
}

impl Shard {
    pub fn num_rows(&self) -> usize {
        self.row_groups.iter().sum()
    }
}

/// The shards of a directory (sorted by name), opened and checked against the schema.
pub struct ShardSet {
    pub dir: PathBuf,
    pub shards: Vec<Shard>,
}

impl ShardSet {
    /// Opens every `*.parquet` in `dir` (or the single file `dir`), reading footers only.
    /// Fails on a missing directory, an unreadable or truncated file, a missing required
    /// column or a mistyped column, naming the file and the column.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let meta = std::fs::metadata(&dir).map_err(|e| DataError::io(&dir, e))?;
        let mut paths = Vec::new();
        if meta.is_file() {
            paths.push(dir.clone());
        } else {
            for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))? {
                let path = entry.map_err(|e| DataError::io(&dir, e))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".parquet") && !name.starts_with('.') {
                    paths.push(path);
                }
            }
            paths.sort();
        }
        if paths.is_empty() {
            return Err(DataError::NoShards { path: dir });
        }
        let shards = paths.into_iter().map(open_shard).collect::<Result<Vec<_>>>()?;
        Ok(Self { dir, shards })
    }

    pub fn num_rows(&self) -> usize {
        self.shards.iter().map(Shard::num_rows).sum()
    }

    /// Reads rows `rows` (sorted, unique, relative to the row group) of row group `rg` of
    /// shard `shard`, decoding only the columns in `columns` (all known ones when empty).
    /// Returns the samples in the order of `rows`.
    pub fn read_rows(&self, shard: usize, rg: usize, rows: &[usize], columns: &[&str]) -> Result<Vec<Sample>> {
        let s = &self.shards[shard];
        let batches = no_panic(&s.path, || read_selected(s, rg, rows, columns))?;
        let mut out = Vec::with_capacity(rows.len());
        for batch in &batches {
            out.extend(batch_to_samples(&conform_batch(&s.path, batch)?));
        }
        if out.len() != rows.len() {
            return Err(DataError::parquet(
                &s.path,
                format!("row group {rg}: asked for {} rows, read {}", rows.len(), out.len()),
            ));
        }
        Ok(out)
    }

    /// The values of one string column (`domain`, `dataset`, `split` or `modality`) for
    /// every row of every shard, read with projection so no media are touched. Files
    /// without `split` give `train`; `dataset` and `modality` must be present.
    pub fn read_string_column(&self, column: &str) -> Result<Vec<Vec<String>>> {
        let pick: fn(Sample) -> String = match column {
            col::DOMAIN => |s| s.domain,
            col::DATASET => |s| s.dataset,
            col::SPLIT => |s| s.split,
            col::MODALITY => |s| s.modality,
            _ => return Err(DataError::Config(format!("read_string_column: unsupported column `{column}`"))),
        };
        let mut out = Vec::with_capacity(self.shards.len());
        for (i, shard) in self.shards.iter().enumerate() {
            let mut values = Vec::with_capacity(shard.num_rows());
            if column == col::SPLIT && shard.metadata.schema().field_with_name(column).is_err() {
                // A shard without the optional `split` column is all `train`, as when read.
                out.push(vec!["train".to_string(); shard.num_rows()]);
                continue;
            }
            for (rg, &rows) in shard.row_groups.iter().enumerate() {
                let all: Vec<usize> = (0..rows).collect();
                values.extend(self.read_rows(i, rg, &all, &[column])?.into_iter().map(pick));
            }
            out.push(values);
        }
        Ok(out)
    }
}

/// Runs a parquet decoding step, turning a panic inside the parquet crate (possible on
/// corrupt input) into an error that names the file.
fn no_panic<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(DataError::parquet(path, "the parquet decoder failed on corrupt data")))
}

fn open_shard(path: PathBuf) -> Result<Shard> {
    let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let metadata =
        no_panic(&path, || ArrowReaderMetadata::load(&file, options).map_err(|e| DataError::parquet(&path, e)))?;
    check_schema(&path, metadata.schema())?;
    let row_groups = metadata.metadata().row_groups().iter().map(|rg| rg.num_rows().max(0) as usize).collect();
    Ok(Shard { path, metadata, row_groups })
}

fn check_schema(path: &Path, schema: &Schema) -> Result<()> {
    for name in col::REQUIRED {
        if schema.field_with_name(name).is_err() {
            return Err(DataError::MissingColumn { path: path.to_path_buf(), column: name.into() });
        }
    }
    // Type-check the known columns that are present, with an empty array of their type.
    for field in schema.fields() {
        if col::ALL.contains(&field.name().as_str()) {
            let empty = arrow_array::new_empty_array(field.data_type());
            conform(path, field.name(), &empty)?;
        }
    }
    Ok(())
}

fn read_selected(s: &Shard, rg: usize, rows: &[usize], columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let file = File::open(&s.path).map_err(|e| DataError::io(&s.path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, s.metadata.clone());
    let arrow_schema = builder.schema().clone();
    let roots: Vec<usize> = arrow_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            col::ALL.contains(&f.name().as_str()) && (columns.is_empty() || columns.contains(&f.name().as_str()))
        })
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_row_groups(vec![rg])
        .with_projection(mask)
        .with_row_selection(selection(rows, s.row_groups[rg]))
        .with_batch_size(rows.len().clamp(1, 1024))
        .build()
        .map_err(|e| DataError::parquet(&s.path, format!("row group {rg}: {e}")))?;
    reader.map(|b| b.map_err(|e| DataError::parquet(&s.path, format!("row group {rg}: {e}")))).collect()
}

/// Skip/select runs for sorted unique `rows` within a row group of `total` rows.
fn selection(rows: &[usize], total: usize) -> RowSelection {
    let mut selectors = Vec::new();
    let mut next = 0;
    for &r in rows {
        if r > next {
            selectors.push(RowSelector::skip(r - next));
        }
        selectors.push(RowSelector::select(1));
        next = r + 1;
    }
    if total > next {
        selectors.push(RowSelector::skip(total - next));
    }
    RowSelection::from(selectors)
}

fn conform_batch(path: &Path, batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        if !col::ALL.contains(&field.name().as_str()) {
            continue;
        }
        let array = conform(path, field.name(), array)?;
        fields.push(arrow_schema::Field::new(field.name(), array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| DataError::parquet(path, e))
}
