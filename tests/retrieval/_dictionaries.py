"""Hand-made dictionaries the retrieval tests rank."""

from kfacel.data.records import Concept

SYMPTOMS = [
    Concept("C1", ("chest pain", "thoracic pain")),
    Concept("C2", ("headache", "cephalgia")),
    Concept("C3", ("fever", "pyrexia")),
    Concept("C4", ("abdominal pain",)),
    Concept("C5", ("nausea",)),
    Concept("C6", ("back pain",), alt_ids=("ALT6",)),
    Concept("C7", ("insomnia",)),
    Concept("C8", ("dizziness",)),
]
"""Symptoms with a synonym or none, one with an alternative id."""

SYNONYMS = [
    Concept("C1", ("Myocardial infarction", "Heart attack")),
    Concept("C2", ("Headache", "Cephalalgia")),
    Concept("C3", ("Fever", "Pyrexia")),
    Concept("C4", ("Nausea",)),
    Concept("C5", ("Insomnia", "Sleeplessness")),
]
"""Concepts whose synonyms share few character 3-grams with their preferred names."""
