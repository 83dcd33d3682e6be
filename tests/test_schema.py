from lsdc import schema


def test_label_columns_in_official_order():
    assert len(schema.LABEL_COLUMNS) == 25
    assert schema.LABEL_COLUMNS[0] == "spinal_canal_stenosis_l1_l2"
    assert schema.LABEL_COLUMNS[5] == "left_neural_foraminal_narrowing_l1_l2"
    assert schema.LABEL_COLUMNS[10] == "right_neural_foraminal_narrowing_l1_l2"
    assert schema.LABEL_COLUMNS[15] == "left_subarticular_stenosis_l1_l2"
    assert schema.LABEL_COLUMNS[-1] == "right_subarticular_stenosis_l5_s1"


def test_row_id_roundtrip():
    rid = schema.row_id(44036939, "Left Neural Foraminal Narrowing", "L1/L2")
    assert rid == "44036939_left_neural_foraminal_narrowing_l1_l2"
    assert schema.parse_row_id(rid) == (44036939, "Left Neural Foraminal Narrowing", "L1/L2")
    assert len(set(schema.study_row_ids(1))) == 25


def test_condition_info():
    info = schema.CONDITION_INFO["Right Subarticular Stenosis"]
    assert (info.group, info.side, info.series) == ("subarticular", "right", schema.AXIAL_T2)
    assert schema.CONDITION_INFO["Spinal Canal Stenosis"].series == schema.SAG_T2
    assert schema.CONDITION_INFO["Left Neural Foraminal Narrowing"].series == schema.SAG_T1
    assert schema.condition_for("foraminal", "left") == "Left Neural Foraminal Narrowing"
    assert [schema.group_of_column(c) for c in schema.LABEL_COLUMNS].count("foraminal") == 10


def test_bad_row_id_refused():
    import pytest

    with pytest.raises(ValueError, match="malformed"):
        schema.parse_row_id("123_spinal_canal_stenosis_l6_s1")
