use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use half::{bf16, f16};
use npyz::{Order, WriterBuilder};
use proptest::prelude::*;
use safetensors::tensor::{Dtype as StDtype, View};

use super::*;

/// An `.npy` file written by npyz.
pub(crate) fn npy<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    shape: &[u64],
    values: &[T],
    fortran: bool,
) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let order = if fortran { Order::Fortran } else { Order::C };
        let mut writer = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .order(order)
            .writer(&mut out)
            .begin_nd()
            .unwrap();
        writer.extend(values.iter().copied()).unwrap();
        writer.finish().unwrap();
    }
    out.into_inner()
}

/// An NPY file with this header text and data, written byte by byte.
fn npy_by_hand(header: &str, data: &[u8]) -> Vec<u8> {
    let mut body = NPY_MAGIC.to_vec();
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(header.len() as u16).to_le_bytes());
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(data);
    body
}

/// An `.npz` of `(name, npy file)` members, deflated or stored.
pub(crate) fn npz(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, file) in members {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(file).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A tensor for [`safetensors_of`]: dtype, shape and little-endian bytes.
pub(crate) struct Raw(pub StDtype, pub Vec<usize>, pub Vec<u8>);

impl View for &Raw {
    fn dtype(&self) -> StDtype {
        self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.2)
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

pub(crate) fn safetensors_of(tensors: &[(&str, Raw)]) -> Vec<u8> {
    safetensors::serialize(tensors.iter().map(|(n, r)| (*n, r)), None).unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn shapes(entries: &[(&str, &[u64])]) -> BTreeMap<String, Vec<u64>> {
    entries
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect()
}

/// A layout of three tensors: `a` [2,2], `b` [] (0-d), `c` [3]: `a` then `b` then `c`.
fn abc() -> Layout {
    Layout::new(Some(&shapes(&[("c", &[3]), ("a", &[2, 2]), ("b", &[])])), 8)
}

/// A body read as `format` and flattened into `layout`, integers refused.
fn read(format: UpdateFormat, body: &[u8], layout: &Layout) -> Result<Vec<f32>, TensorError> {
    let (parsed, _) = read_body(format, body, 1 << 20)?;
    layout.flatten(&parsed, IntegerPolicy::Refuse)
}

/// A flat body read into a layout of its own length (raw f32, `.npy`, JSON values).
fn flat(format: UpdateFormat, body: &[u8]) -> Result<Vec<f32>, TensorError> {
    let (parsed, _) = read_body(format, body, 1 << 20)?;
    let Body::Flat(elements) = &parsed else {
        panic!("not flat")
    };
    Layout::new(None, elements.len()).flatten(&parsed, IntegerPolicy::Refuse)
}

#[test]
fn named_tensors_land_in_name_order_whatever_the_file_order() {
    let layout = abc();
    let expected = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    let st = safetensors_of(&[
        (
            "c",
            Raw(
                StDtype::F64,
                vec![3],
                [6.0f64, 7.0, 8.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        ),
        (
            "b",
            Raw(
                StDtype::F16,
                vec![],
                f16::from_f32(5.0).to_le_bytes().to_vec(),
            ),
        ),
        (
            "a",
            Raw(StDtype::F32, vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
        ),
    ]);
    assert_eq!(
        read(UpdateFormat::Safetensors, &st, &layout).unwrap(),
        expected
    );

    for deflate in [false, true] {
        let archive = npz(
            &[
                ("b", npy::<f32>(&[], &[5.0], false)),
                ("c", npy(&[3], &[6.0f64, 7.0, 8.0], false)),
                ("a", npy(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0], false)),
            ],
            deflate,
        );
        assert_eq!(
            read(UpdateFormat::Npz, &archive, &layout).unwrap(),
            expected
        );
        // The zip magic is recognised under octet-stream too.
        assert_eq!(
            read(UpdateFormat::Raw, &archive, &layout).unwrap(),
            expected
        );
    }

    let json = br#"{"tensors": {"c": [6, 7, 8], "b": 5, "a": [[1, 2], [3, 4.0]]}}"#;
    assert_eq!(read(UpdateFormat::Json, json, &layout).unwrap(), expected);
    // A flat array of the whole length is still accepted.
    assert_eq!(
        read(UpdateFormat::Raw, &f32_bytes(&expected), &layout).unwrap(),
        expected
    );
}

#[test]
fn tensors_that_do_not_fit_the_shapes_are_named() {
    let layout = abc();
    let cases = [
        (
            r#"{"tensors": {"a": [[1, 2], [3, 4]], "b": 5}}"#,
            "lacks tensor `c`",
        ),
        (
            r#"{"tensors": {"a": [[1, 2], [3, 4]]}}"#,
            "lacks tensors `b`, `c`",
        ),
        (
            r#"{"tensors": {"a": [[1, 2], [3, 4]], "b": 5, "c": [1, 2, 3], "d": 1}}"#,
            "tensor `d` is not one of the session's tensors (`a`, `b`, `c`)",
        ),
        (
            r#"{"tensors": {"a": [1, 2, 3, 4], "b": 5, "c": [1, 2, 3]}}"#,
            "tensor `a` has shape [4]; the session expects [2, 2]",
        ),
        (
            r#"{"tensors": {"a": [[1, 2], [3, 4]], "b": [5], "c": [1, 2, 3]}}"#,
            "tensor `b` has shape [1]; the session expects []",
        ),
        (
            r#"{"tensors": {"a": [[1, 2], [3, 4]], "b": 5, "c": [1, 2, 3], "a": [[1, 2], [3, 4]]}}"#,
            "tensor `a` is given twice",
        ),
        (
            r#"{"values": [1, 2, 3]}"#,
            "the update holds 3 values; the session's length is 8",
        ),
    ];
    for (body, needle) in cases {
        let e = read(UpdateFormat::Json, body.as_bytes(), &layout).unwrap_err();
        assert!(matches!(e, TensorError::Layout(_)), "{body}: {e:?}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
}

#[test]
fn integer_tensors_are_refused_by_name_unless_included() {
    let layout = Layout::new(
        Some(&shapes(&[("w", &[2]), ("bn.num_batches_tracked", &[])])),
        3,
    );
    let st = safetensors_of(&[
        ("w", Raw(StDtype::F32, vec![2], f32_bytes(&[0.5, -0.5]))),
        (
            "bn.num_batches_tracked",
            Raw(StDtype::I64, vec![], 12i64.to_le_bytes().to_vec()),
        ),
    ]);
    let e = read(UpdateFormat::Safetensors, &st, &layout).unwrap_err();
    assert_eq!(
        e,
        TensorError::Integer {
            name: "bn.num_batches_tracked".into(),
            dtype: "int64".into()
        }
    );
    assert!(e.to_string().contains("\"integers\": \"include\""), "{e}");
    let (parsed, _) = read_body(UpdateFormat::Safetensors, &st, 0).unwrap();
    assert_eq!(
        layout.flatten(&parsed, IntegerPolicy::Include).unwrap(),
        vec![12.0, 0.5, -0.5]
    );
    // The same from .npy and .npz files, with NumPy's names.
    for (file, dtype) in [
        (npy(&[3], &[1i32, 2, 3], false), "int32"),
        (npy(&[3], &[1u8, 2, 3], false), "uint8"),
        (npy(&[3], &[1i64, 2, 3], false), "int64"),
    ] {
        let e = flat(UpdateFormat::Npy, &file).unwrap_err();
        assert!(
            e.to_string().contains(&format!("integer dtype {dtype}")),
            "{e}"
        );
    }
    let e = flat(
        UpdateFormat::Npy,
        &npy_by_hand(
            "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        ),
    )
    .unwrap_err();
    assert!(matches!(e, TensorError::UnsupportedDtype { .. }), "{e:?}");
    assert!(e.to_string().contains("complex (NumPy '<c8')"), "{e}");
}

#[test]
fn every_float_dtype_is_converted_and_non_finite_values_are_refused() {
    let layout = Layout::new(Some(&shapes(&[("x", &[2])])), 2);
    let values = [1.5f32, -0.25];
    let cases: Vec<(StDtype, Vec<u8>)> = vec![
        (StDtype::F32, f32_bytes(&values)),
        (
            StDtype::F64,
            values
                .iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect(),
        ),
        (
            StDtype::F16,
            values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        (
            StDtype::BF16,
            values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        ),
    ];
    for (dtype, bytes) in cases {
        let st = safetensors_of(&[("x", Raw(dtype, vec![2], bytes))]);
        assert_eq!(
            read(UpdateFormat::Safetensors, &st, &layout).unwrap(),
            values,
            "{dtype:?}"
        );
    }
    let bad: Vec<(StDtype, Vec<u8>, &str)> = vec![
        (
            StDtype::F16,
            [f16::ONE, f16::INFINITY]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            "inf",
        ),
        (
            StDtype::BF16,
            [bf16::NAN, bf16::ONE]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            "NaN",
        ),
        (
            StDtype::F64,
            [0.0f64, 1e39]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            "1000000000000000000000000000000000000000",
        ),
    ];
    for (dtype, bytes, shown) in bad {
        let st = safetensors_of(&[("x", Raw(dtype, vec![2], bytes))]);
        let e = read(UpdateFormat::Safetensors, &st, &layout).unwrap_err();
        assert!(
            matches!(e, TensorError::NotFinite { .. }),
            "{dtype:?}: {e:?}"
        );
        assert!(
            e.to_string().contains("tensor `x` value") && e.to_string().contains(shown),
            "{e}"
        );
    }
    let st = safetensors_of(&[("x", Raw(StDtype::C64, vec![1], vec![0; 8]))]);
    let e = read(
        UpdateFormat::Safetensors,
        &st,
        &Layout::new(Some(&shapes(&[("x", &[1])])), 1),
    )
    .unwrap_err();
    assert!(matches!(e, TensorError::UnsupportedDtype { .. }), "{e:?}");
}

#[test]
fn a_session_without_shapes_takes_one_named_array_of_its_length() {
    let layout = Layout::new(None, 3);
    let archive = npz(&[("anything", npy(&[3], &[1.0f32, 2.0, 3.0], false))], true);
    assert_eq!(
        read(UpdateFormat::Npz, &archive, &layout).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    let two = npz(
        &[
            ("a", npy(&[1], &[1.0f32], false)),
            ("b", npy(&[2], &[1.0f32, 2.0], false)),
        ],
        false,
    );
    let e = read(UpdateFormat::Npz, &two, &layout).unwrap_err();
    assert!(e.to_string().contains("has no `shapes`"), "{e}");
}

#[test]
fn malformed_files_of_every_format_are_refused() {
    let layout = abc();
    let st = safetensors_of(&[(
        "a",
        Raw(StDtype::F32, vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
    )]);
    let mut short_header = st.clone();
    short_header[0] = 0xff; // the header length now exceeds the file
    let cases: Vec<(UpdateFormat, Vec<u8>)> = vec![
        (UpdateFormat::Safetensors, vec![]),
        (UpdateFormat::Safetensors, b"12345678{}".to_vec()),
        (UpdateFormat::Safetensors, short_header),
        (UpdateFormat::Safetensors, st[..st.len() - 1].to_vec()),
        (UpdateFormat::Npz, b"PK\x03\x04 not a zip".to_vec()),
        (
            UpdateFormat::Npz,
            npz(&[("a", b"not an npy".to_vec())], true),
        ),
        (UpdateFormat::Npz, {
            let mut z = npz(&[("a", npy(&[2, 2], &[1.0f32; 4], false))], false);
            let n = z.len();
            z.truncate(n - 30);
            z
        }),
        (UpdateFormat::Npy, b"plain bytes".to_vec()),
        (UpdateFormat::Raw, vec![0; 7]),
    ];
    for (format, body) in cases {
        let e = read(format, &body, &layout).unwrap_err();
        assert!(
            matches!(e, TensorError::Malformed(_)),
            "{format:?} {:?}: {e:?}",
            &body[..body.len().min(16)]
        );
    }
    // A member that is not an .npy file is named.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("a.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"hello").unwrap();
    let body = zip.finish().unwrap().into_inner();
    let e = read(UpdateFormat::Npz, &body, &layout).unwrap_err();
    assert!(e.to_string().contains("`a.txt` is not an .npy file"), "{e}");
    for (body, needle) in [
        (&br#"{"tensors": {"a": [[1, 2], [3]]}}"#[..], "ragged"),
        (br#"{"tensors": {"a": [1, [2]]}}"#, "ragged"),
        (br#"{"tensors": {"a": [[1], 2]}}"#, "ragged"),
        (br#"{"tensors": {"a": "x"}}"#, "a number or a list"),
        (br#"{"tensors": [1]}"#, "named tensors"),
        (br#"{"values": [1], "tensors": {}}"#, "not both"),
        (br#"{"weight": 2}"#, "needs `values` or `tensors`"),
        (br#"{"vals": []}"#, "unknown field"),
    ] {
        let e = read(UpdateFormat::Json, body, &layout).unwrap_err();
        assert!(matches!(e, TensorError::Json(_)), "{e:?}");
        assert!(
            e.to_string().contains(needle),
            "{}: {e}",
            String::from_utf8_lossy(body)
        );
    }
    let deep = format!(
        "{{\"tensors\": {{\"a\": {}1{}}}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    assert!(read(UpdateFormat::Json, deep.as_bytes(), &layout).is_err());
}

#[test]
fn an_npz_cannot_unpack_to_more_than_its_budget() {
    // 1 MB of zeros deflates to about a kilobyte.
    let big = npy(&[1 << 18], &vec![0f32; 1 << 18], false);
    let archive = npz(&[("a", big.clone())], true);
    assert!(archive.len() < 8 << 10, "{}", archive.len());
    let e = parse_npz(&archive, big.len() as u64 - 1).unwrap_err();
    assert!(e.to_string().contains("decompress to more than"), "{e}");
    assert!(parse_npz(&archive, big.len() as u64).is_ok());
    // Two members share the budget.
    let two = npz(&[("a", big.clone()), ("b", big.clone())], true);
    assert!(parse_npz(&two, big.len() as u64 * 2 - 1).is_err());
}

#[test]
fn json_weight_is_read_beside_the_values() {
    let (body, weight) = parse_json(br#"{"values": [1, 2], "weight": 12}"#).unwrap();
    assert_eq!(weight, Some(12.0));
    assert_eq!(body, Body::Flat(Elements::Numbers(vec![1.0, 2.0])));
    let (_, weight) = parse_json(br#"{"tensors": {"a": 1}, "weight": 0.5}"#).unwrap();
    assert_eq!(weight, Some(0.5));
    assert_eq!(parse_json(b"[1]").unwrap().1, None);
}

#[test]
fn results_are_written_as_named_tensors() {
    let layout = abc();
    let values: Vec<f64> = (1..=8).map(|v| v as f64 / 4.0).collect();
    let metadata = HashMap::from([("kind".to_string(), "mean".to_string())]);
    let file = write_safetensors(&layout, &values, metadata).unwrap();
    let (parsed, _) = read_body(UpdateFormat::Safetensors, &file, 0).unwrap();
    assert_eq!(
        layout.flatten(&parsed, IntegerPolicy::Refuse).unwrap(),
        values.iter().map(|&v| v as f32).collect::<Vec<_>>()
    );
    let (_, meta) = safetensors::SafeTensors::read_metadata(&file).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["kind"], "mean");
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    assert_eq!(st.tensor("b").unwrap().shape(), &[] as &[usize]);
    assert_eq!(st.tensor("a").unwrap().dtype(), StDtype::F64);

    let json = serde_json::to_value(NestedTensors::new(&layout, &values)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"a": [[0.25, 0.5], [0.75, 1.0]], "b": 1.25, "c": [1.5, 1.75, 2.0]})
    );
    let flat = Layout::new(None, 2);
    let json = serde_json::to_value(NestedTensors::new(&flat, &[1.0, 2.0])).unwrap();
    assert_eq!(json, serde_json::json!({"values": [1.0, 2.0]}));
    assert!(write_safetensors(&layout, &values[1..], HashMap::new()).is_err());
}

#[test]
fn update_formats_by_media_type_and_extension() {
    for f in [
        UpdateFormat::Json,
        UpdateFormat::Raw,
        UpdateFormat::Npy,
        UpdateFormat::Npz,
        UpdateFormat::Safetensors,
    ] {
        assert_eq!(UpdateFormat::from_media_type(f.media_type()), Some(f));
    }
    assert_eq!(
        UpdateFormat::from_media_type("Application/JSON ; charset=UTF-8"),
        Some(UpdateFormat::Json)
    );
    assert_eq!(UpdateFormat::from_media_type("text/csv"), None);
    assert_eq!(
        UpdateFormat::from_extension("SAFETENSORS"),
        UpdateFormat::Safetensors
    );
    assert_eq!(UpdateFormat::from_extension("npz"), UpdateFormat::Npz);
    assert_eq!(UpdateFormat::from_extension("bin"), UpdateFormat::Raw);
}

// --- flat bodies (moved with the parsers from the API) -------------------------------------

#[test]
fn raw_and_json_flat_bodies() {
    let values = [1.0f32, -0.0, f32::MIN_POSITIVE, f32::MAX, -123.456];
    let parsed = flat(UpdateFormat::Raw, &f32_bytes(&values)).unwrap();
    assert_eq!(
        parsed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        values.map(f32::to_bits)
    );
    assert_eq!(flat(UpdateFormat::Raw, b"").unwrap(), Vec::<f32>::new());
    let e = flat(UpdateFormat::Raw, &[0u8; 7]).unwrap_err();
    assert!(
        e.to_string().contains("multiple of 4") && e.to_string().contains("7 bytes"),
        "{e}"
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = flat(UpdateFormat::Raw, &f32_bytes(&[1.0, bad])).unwrap_err();
        assert!(e.to_string().contains("value 1 is"), "{e}");
    }
    assert_eq!(
        flat(UpdateFormat::Json, br#"{"values": [1, -2.5, 3e2, 0]}"#).unwrap(),
        vec![1.0, -2.5, 300.0, 0.0]
    );
    assert_eq!(
        flat(UpdateFormat::Json, b"  [0.5, 1.5]").unwrap(),
        vec![0.5, 1.5]
    );
    let e = flat(UpdateFormat::Json, b"{\"values\":[0, 1e39]}").unwrap_err();
    assert!(
        matches!(e, TensorError::NotFinite { .. }) && e.to_string().contains("value 1"),
        "{e}"
    );
    let body = format!("[{}, 1e-50]", f32::MAX);
    assert_eq!(
        flat(UpdateFormat::Json, body.as_bytes()).unwrap(),
        vec![f32::MAX, 0.0]
    );
    for body in [
        &b"{"[..],
        b"{\"values\": [1, \"x\"]}",
        b"",
        b"[1,]",
        b"{\"values\":[1e999]}",
    ] {
        assert!(
            matches!(flat(UpdateFormat::Json, body), Err(TensorError::Json(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn npy_any_shape_and_byte_order() {
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    for shape in [&[24u64][..], &[2, 3, 4], &[4, 6], &[1, 24, 1]] {
        let body = npy(shape, &values, false);
        assert_eq!(flat(UpdateFormat::Npy, &body).unwrap(), values, "{shape:?}");
        // The magic is recognised under octet-stream too.
        assert_eq!(flat(UpdateFormat::Raw, &body).unwrap(), values, "{shape:?}");
    }
    assert_eq!(
        flat(UpdateFormat::Npy, &npy::<f32>(&[], &[7.5], false)).unwrap(),
        vec![7.5]
    );
    assert_eq!(
        flat(UpdateFormat::Npy, &npy::<f32>(&[0, 3], &[], false)).unwrap(),
        Vec::<f32>::new()
    );
    let big_endian: Vec<u8> = [1.5f64, -2.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let body = npy_by_hand(
        "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }",
        &big_endian,
    );
    assert_eq!(flat(UpdateFormat::Npy, &body).unwrap(), vec![1.5, -2.0]);
    let half: Vec<u8> = [f16::from_f32(0.5), f16::from_f32(-4.0)]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let body = npy_by_hand(
        "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
        &half,
    );
    assert_eq!(flat(UpdateFormat::Npy, &body).unwrap(), vec![0.5, -4.0]);
}

#[test]
fn npy_fortran_order_is_refused_unless_it_is_c_order_too() {
    let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let e = flat(UpdateFormat::Npy, &npy(&[2, 3], &values, true)).unwrap_err();
    assert!(e.to_string().contains("Fortran order"), "{e}");
    assert_eq!(
        flat(UpdateFormat::Npy, &npy(&[6, 1], &values, true)).unwrap(),
        values
    );
}

#[test]
fn npy_data_length_must_match_the_shape_and_headers_are_bounded() {
    let mut body = npy(&[4], &[1.0f32, 2.0, 3.0, 4.0], false);
    body.pop();
    let e = flat(UpdateFormat::Npy, &body).unwrap_err();
    assert!(
        e.to_string()
            .contains("needs 16 data bytes; the file has 15"),
        "{e}"
    );
    body.extend_from_slice(&[0, 0, 0, 0, 0]);
    assert!(matches!(
        flat(UpdateFormat::Npy, &body),
        Err(TensorError::Malformed(_))
    ));
    let huge = npy_by_hand(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999, 99999999999999), }",
        &[],
    );
    assert!(matches!(
        flat(UpdateFormat::Npy, &huge),
        Err(TensorError::Malformed(_))
    ));
    // A declared header length past the body, or past the cap, is refused before parsing.
    let mut body = NPY_MAGIC.to_vec();
    body.extend_from_slice(&[2, 0]);
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        flat(UpdateFormat::Npy, &body),
        Err(TensorError::Malformed(_))
    ));
    let deep = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}1,{}, }}",
        "(".repeat(64),
        ")".repeat(64)
    );
    assert!(matches!(
        flat(UpdateFormat::Npy, &npy_by_hand(&deep, &[0; 4])),
        Err(TensorError::Malformed(_))
    ));
    for body in [
        NPY_MAGIC,
        b"\x93NUMPY\x01",
        b"\x93NUMPY\x09\x00\x00\x00",
        b"\x93NUMPY\x01\x00\xff",
    ] {
        assert!(matches!(
            flat(UpdateFormat::Npy, body),
            Err(TensorError::Malformed(_))
        ));
    }
    assert!(matches!(
        flat(UpdateFormat::Npy, &npy_by_hand("not a dict", &[])),
        Err(TensorError::Malformed(_))
    ));
}

fn any_format() -> impl Strategy<Value = UpdateFormat> {
    prop_oneof![
        Just(UpdateFormat::Json),
        Just(UpdateFormat::Raw),
        Just(UpdateFormat::Npy),
        Just(UpdateFormat::Npz),
        Just(UpdateFormat::Safetensors),
    ]
}

proptest! {
    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), format in any_format()) {
        let _ = read(format, &body, &abc());
    }

    #[test]
    fn random_bytes_after_a_valid_safetensors_header_never_panic(
        header in "\\{\"a\":\\{\"dtype\":\"(F32|F16|I64|BF16|F64|U8)\",\"shape\":\\[([0-9]{1,3},){0,2}[0-9]{1,3}\\],\"data_offsets\":\\[[0-9]{1,3},[0-9]{1,3}\\]\\}\\}",
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut body = (header.len() as u64).to_le_bytes().to_vec();
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(&tail);
        let _ = read(UpdateFormat::Safetensors, &body, &abc());
    }

    #[test]
    fn random_bodies_after_the_npy_magic_never_panic(
        version in 0u8..5,
        header in "\\{'descr': '[<>|]?[fiub][1248]', 'fortran_order': (True|False), 'shape': \\(([0-9]{1,12}, ){0,3}\\), \\}",
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut body = NPY_MAGIC.to_vec();
        body.extend_from_slice(&[version, 0]);
        if version == 1 {
            body.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            body.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(&tail);
        let _ = flat(UpdateFormat::Npy, &body);
    }

    #[test]
    fn damaged_npz_files_never_panic(at in 0usize..400, byte in any::<u8>(), cut in any::<bool>()) {
        let mut archive = npz(&[("a", npy(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0], false))], true);
        let at = at % archive.len();
        if cut { archive.truncate(at) } else { archive[at] = byte }
        let _ = read(UpdateFormat::Npz, &archive, &abc());
    }

    #[test]
    fn named_tensors_round_trip_in_every_format(
        a in proptest::collection::vec(-1e30f32..1e30, 4),
        b in -1e30f32..1e30,
        c in proptest::collection::vec(-1e30f32..1e30, 3),
        reversed in any::<bool>(),
    ) {
        let layout = abc();
        let mut expected = a.clone();
        expected.push(b);
        expected.extend(&c);
        let mut named = [("a", vec![2usize, 2], a.clone()), ("b", vec![], vec![b]), ("c", vec![3], c.clone())];
        if reversed { named.reverse() }
        let st = safetensors_of(&named.iter().map(|(n, s, v)| (*n, Raw(StDtype::F32, s.clone(), f32_bytes(v)))).collect::<Vec<_>>());
        prop_assert_eq!(read(UpdateFormat::Safetensors, &st, &layout).unwrap(), expected.clone());
        let members: Vec<(&str, Vec<u8>)> = named.iter().map(|(n, s, v)| {
            let shape: Vec<u64> = s.iter().map(|&d| d as u64).collect();
            (*n, npy(&shape, v, false))
        }).collect();
        prop_assert_eq!(read(UpdateFormat::Npz, &npz(&members, true), &layout).unwrap(), expected.clone());
        let json = serde_json::json!({"tensors": {"c": c, "b": b, "a": [[a[0], a[1]], [a[2], a[3]]]}});
        prop_assert_eq!(read(UpdateFormat::Json, json.to_string().as_bytes(), &layout).unwrap(), expected);
    }

    #[test]
    fn nested_json_round_trips_through_the_result_writer(
        values in proptest::collection::vec(-1e300f64..1e300, 8),
    ) {
        let layout = abc();
        let json = serde_json::json!({"tensors": NestedTensors::new(&layout, &values)});
        let (body, _) = parse_json(json.to_string().as_bytes()).unwrap();
        let Body::Named(tensors) = body else { panic!("not named") };
        for (name, tensor) in tensors {
            let (_, shape, part) = layout.split(&values).find(|(n, _, _)| *n == name).unwrap();
            prop_assert_eq!(&tensor.shape[..], shape);
            prop_assert_eq!(tensor.elements, Elements::Numbers(part.to_vec()));
        }
    }
}

#[test]
fn a_json_body_with_more_numbers_than_the_update_can_take_is_refused_unparsed() {
    use super::json::check_json_numbers;
    // Strings (a tensor's name, escaped quotes included) hold no numbers.
    let named = br#"{"tensors": {"w \"1,2\" 3": [[1.5, -2e3], [3, 4]]}, "weight": 12}"#;
    assert!(check_json_numbers(named, 5).is_ok());
    assert!(check_json_numbers(named, 4).is_err());
    let flat = br#"[0,0,0,0]"#;
    assert!(check_json_numbers(flat, 4).is_ok());
    let err = check_json_numbers(flat, 3).unwrap_err().to_string();
    assert!(err.contains("more than 3 numbers"), "{err}");
    // Through read_body: a 1-value budget refuses a body of 2 numbers before parsing it.
    assert!(read_body(UpdateFormat::Json, b"[1, 2]", 8).is_err());
    assert!(read_body(UpdateFormat::Json, b"[1]", 8).is_ok());
}
