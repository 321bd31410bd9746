"""The phantom's report language: phrase tables written for this project (no real report text),
in the style of MIMIC-CXR's FINDINGS and IMPRESSION, and the small template expander they use.

A template is plain text with `{slot}` fields filled by the sentence builder (reports.py) and
`[a|b|c]` groups, each replaced by one of its alternatives (an empty one drops the group;
groups nest). `expand(rng, template, **slots)` fills the slots, then picks the groups innermost
first, left to right, one draw each, and tidies the result (spaces, "a"/"an", capital, final
period): same stream, same sentence.

The tables give several phrasings per finding and per normal statement: synonyms and size words
by grade, anatomical detail (lobes, zones, bases, costophrenic angles, hemidiaphragms), hedges and
negations in varied frames, sentences that name no label word ("blunting of the left
costophrenic angle", "subsegmental collapse", "Kerley B lines"), and comparisons with a prior
study. The MedCLIP 5x200 prompt phrases occur only as some of many alternatives.
"""

from __future__ import annotations

import re

import numpy as np

_GROUP = re.compile(r"\[([^\[\]]*)\]")
_SPACES = re.compile(r"\s+")
_SPACE_PUNCT = re.compile(r"\s+([,.;:])")
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_DOUBLE_PUNCT = re.compile(r"([,.;])\s*[,.;]+")


def expand(rng: np.random.Generator, template: str, **slots: str) -> str:
    """One sentence from a template: slots filled, `[a|b]` groups chosen, text tidied."""
    return tidy(choose(rng, template.format(**slots) if slots else template))


def choose(rng: np.random.Generator, text: str) -> str:
    """`text` with each `[a|b]` group replaced by one of its alternatives (innermost first, left to right)."""
    while True:
        match = _GROUP.search(text)
        if match is None:
            break
        options = match.group(1).split("|")
        text = text[: match.start()] + options[int(rng.integers(len(options)))] + text[match.end() :]
    return text


def tidy(text: str) -> str:
    """Spaces collapsed and before punctuation dropped, "a" before a vowel made "an", the first
    letter upper case, a final period."""
    text = _SPACE_PUNCT.sub(r"\1", _SPACES.sub(" ", text)).strip(" ,")
    text = _DOUBLE_PUNCT.sub(r"\1", _ARTICLE.sub(lambda m: m.group(1) + "n ", text))
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?")) else text + "."


# ---- where: sides and zones -------------------------------------------------------------------
# {s} is the side word; bilateral findings use the `both` forms.
WHERE_PREP = {
    "base": ["at the {s} [lung |]base", "in the {s} [lung |]base", "in the {s} lower [lung |]zone", "at the {s} base",
             "at the {s} lung base", "[along|at] the {s} hemidiaphragm"],
    "lower": [
        "in the {s} lower lobe", "at the {s} lower lobe", "in the {s} lower lung[ zone|]", "within the {s} lower lobe",
        "in the [posterior|lateral|] {s} lower lobe",
    ],
    "upper": [
        "in the {s} upper lobe", "at the {s} upper lobe", "in the {s} upper lung[ zone|]", "within the {s} upper lobe",
        "in the [apical|anterior|posterior] segment of the {s} upper lobe",
    ],
    "mid": [
        "in the {s} mid lung[ zone|]", "in the {s} perihilar region", "at the {s} mid lung zone", "in the {s} midlung",
    ],
    "retrocardiac": [
        "in the retrocardiac region", "behind the heart", "in the left retrocardiac region",
        "at the left base, behind the heart", "in the left lower lobe, [behind|projecting behind] the heart",
    ],
    "apical": ["at the {s} apex", "in the {s} apical region", "at the {s} lung apex", "at the {s} apex laterally"],
    "perihilar": ["in the perihilar regions", "in both perihilar regions", "centrally"],
}
WHERE_PREP_BOTH = {
    "base": ["at [both|the] lung bases", "at the bilateral lung bases", "at both bases", "in the lung bases",
             "in both lower [lung |]zones", "at the bases bilaterally"],
    "lower": [
        "in both lower lobes", "in the lower lobes bilaterally", "in the lower lung zones", "at the lower lung zones",
        "in both lower lungs",
    ],
    "upper": ["in both upper lobes", "in the upper lobes bilaterally", "in the upper lung zones",
              "at the upper lung zone on both sides"],
    "mid": ["in both mid lungs", "in the mid lung zones bilaterally", "in both perihilar regions"],
}
WHERE_ADJ = {
    "base": ["{s} basilar", "{s} basal", "{s} base", "{s} lower zone", "{s} lung base"],
    "lower": ["{s} lower lobe", "{s} lower lung"], "upper": ["{s} upper lobe", "{s} upper lung", "{s} upper zone"],
    "mid": ["{s} mid lung", "{s} perihilar", "{s} midlung"],
    "retrocardiac": ["retrocardiac", "left retrocardiac", "left lower lobe"],
    "apical": ["{s} apical", "{s} apicolateral"], "perihilar": ["perihilar", "bilateral perihilar", "central"],
}
WHERE_ADJ_BOTH = {
    "base": ["bibasilar", "bilateral basilar", "bibasal", "bilateral lower zone"],
    "lower": ["bilateral lower lobe", "bilateral lower lung"],
    "upper": ["bilateral upper lobe", "bilateral upper zone"], "mid": ["bilateral mid lung", "bilateral perihilar"],
}
MIDDLE = {
    "right": ["in the right middle lobe", "in the right middle lobe laterally"],
    "left": ["in the lingula", "in the lingular segment", "in the inferior lingula"],
}

# ---- size and change words by grade ----------------------------------------------------------
SIZE = {  # atelectasis, consolidation, edema
    "subtle": ["minimal", "subtle", "slight", "trace", "minor", "faint", "very mild"],
    "mild": ["mild", "mild", "small", "minor", "patchy"], "moderate": ["", "", "moderate", "moderate", "moderate"],
    "severe": ["extensive", "marked", "severe", "substantial", "dense"],
}
EFFUSION_SIZE = {
    "subtle": ["tiny", "trace", "very small", "minimal"], "mild": ["small", "small", "small", "small-to-moderate"],
    "moderate": ["moderate", "moderate", "moderate-sized", "medium-sized"],
    "severe": ["large", "large", "moderate-to-large", "large"],
}
HEART_ADVERB = {
    "subtle": ["borderline", "minimally", "slightly", "borderline"], "mild": ["mildly", "mildly", "slightly", "mildly"],
    "moderate": ["moderately", "moderately", "", "substantially"],
    "severe": ["markedly", "severely", "massively", "markedly"],
}
HEART_ADJ = {
    "subtle": ["borderline", "minimal", "slight"], "mild": ["mild", "mild", "slight"],
    "moderate": ["moderate", "", "moderate"], "severe": ["severe", "marked", "massive"],
}
PNEUMOTHORAX_SIZE = {
    "subtle": ["tiny", "trace", "very small"], "mild": ["small", "small", "small apical"],
    "moderate": ["moderate", "moderate-sized", "medium-sized"], "severe": ["large", "large", "sizable"],
}
# Change since a prior study: a leading phrase for a finding's noun phrase, or "" for none.
CHANGE_LEAD = {
    "new": ["new", "newly developed", "interval development of", "new"],
    "stable": ["stable", "grossly stable", "similar", "stable"],
    "unchanged": ["unchanged", "redemonstrated", "again seen", "again demonstrated"],
    "increased": ["increased", "interval increase in", "slightly increased", "worsening"],
    "decreased": ["decreased", "interval decrease in", "slightly decreased", "smaller"],
    "improved": ["improved", "improving", "interval improvement in", "partially improved"],
    "persistent": ["persistent", "persistent", "residual", "persisting"],
}
CHANGE_TAIL = {
    "new": ["[since|compared to] the prior [study|radiograph|exam]", "which is new", "not present previously"],
    "stable": ["[which is |]stable [since|compared to|from] [the |]prior[ study| radiograph|]", "without change"],
    "unchanged": ["unchanged from [the |]prior[ study| exam|]", "which is unchanged", "as before"],
    "increased": ["[which has |]increased since the prior [study|radiograph]", "slightly larger than before"],
    "decreased": ["[which has |]decreased since the prior [study|radiograph]", "smaller than before"],
    "improved": ["[which has |]improved [since|compared to] the prior [study|radiograph]", "improving"],
    "persistent": ["[which |]persists", "again noted", "as on the prior study"],
}
PRIOR = ["the prior [study|radiograph|chest radiograph|exam|examination][ of ___| from ___| dated ___|]",
         "[a |the ]previous [study|radiograph|chest radiograph] [from ___|]", "the [most recent |]prior [film|study]"]
COMPARE_LEAD = ["Compared to {prior}", "Compared with {prior}", "In comparison with {prior}", "As compared to {prior}",
                "Since {prior}", "Relative to {prior}"]

# ---- findings: {chg} a change lead, {tail} a change tail, {sz} a size word, {where} / {adj} places --------
KIND = {  # atelectasis kinds by the vocabulary subtype's first word
    "subsegmental": ["subsegmental", "subsegmental", "linear", "plate-like", ""],
    "linear": ["linear", "linear", "plate-like", "platelike", "streaky", ""], "trace": ["trace", "minimal", ""],
    "bibasilar": ["", "subsegmental", "linear"], "retrocardiac": ["", "subsegmental", "dependent"],
    "bandlike": ["bandlike", "band-like", "discoid", ""], "residual": ["residual", "residual", ""],
}
ATELECTASIS = {
    "findings": [
        "[There is|There are|Again seen is|Note is made of|There is some] {chg} {sz} {kind} atelectasis {where}",
        "{chg} {sz} {kind} atelectasis {where}", "{chg} {sz} {adj} {kind} atelectasis",
        "[Linear|Plate-like|Streaky|Discoid] [opacities|densities] {where} [are|] "
        "[consistent with|compatible with|in keeping with] {sz} atelectasis",
        "{sz} {adj} [linear|plate-like|discoid|band-like] [opacity|opacities], "
        "[consistent with|compatible with|in keeping with] atelectasis",
        "{sz} [subsegmental|segmental|linear|plate-like] [collapse|volume loss] {where}",
        "[Linear|Plate-like|Discoid|Band-like] [bands|lines|shadows] {where}[, unchanged|]",
        "{kind} atelectasis {where} {tail}", "{adj} {kind} atelectasis [is|remains] {tail}",
    ],
    "impression": ["{chg} {sz} {adj} atelectasis", "{adj} atelectasis[, {tail}|]", "{sz} atelectasis {where}",
                   "{chg} {adj} [subsegmental |linear |]atelectasis", "{sz} {adj} [collapse|volume loss]"],
    "hedged": ["[Possible|Questionable|Probable|Likely] {sz} {adj} atelectasis",
               "{sz} {adj} opacity, [which may represent|possibly representing|which could reflect] atelectasis",
               "[Subtle|Faint|Minimal] [linear |streaky |]opacity {where} may [reflect|represent] atelectasis"
               "[ or early infection| or scarring|]",
               "[Streaky|Hazy] {adj} opacity[, likely| which is likely|, probably] atelectasis",
               "Atelectasis {where} cannot be excluded"],
    "hedged_impression": [
        "[Possible|Questionable|Probable] {adj} atelectasis", "{adj} opacity, [likely|possibly] atelectasis",
        "Cannot exclude {sz} atelectasis {where}",
    ],
}
CARDIOMEGALY = {
    "findings": [
        "The heart is {adv} enlarged",
        "[Heart size|The cardiac silhouette|The cardiac silhouette size|The cardiac size] is {adv} enlarged",
        "[The |]heart size is {adv} [increased|enlarged]", "There is {adj} cardiomegaly", "{chg} {adj} cardiomegaly",
        "{adj} cardiomegaly {tail}", "[Enlarged|Enlargement of the] cardiac silhouette[, {tail}|]",
        "{adv} enlarged cardiac silhouette",
        "The cardiac silhouette is {adv} enlarged[, with a left ventricular configuration|]",
        "{adv} [prominent|enlarged] cardiac [contour|silhouette|shadow]",
        "[The |]cardiothoracic ratio is {adv} increased", "{phrase}",
    ],
    "impression": [
        "{adj} cardiomegaly", "{chg} {adj} cardiomegaly",
        "[Enlarged heart|Cardiac enlargement|Enlarged cardiac silhouette]", "{adv} enlarged heart[, {tail}|]",
        "Cardiomegaly[, {tail}|]",
    ],
    "hedged": [
        "The heart size is [possibly|likely|probably] [mildly|slightly] enlarged[, though this may be accentuated "
        "by [technique|low lung volumes|AP technique]|]", "[Possible|Questionable] [mild|borderline] cardiomegaly",
        "Heart size may be [mildly|slightly] enlarged",
        "The cardiac silhouette [may be|is possibly] [mildly |]enlarged[, accentuated by AP technique|]",
    ],
    "hedged_impression": [
        "[Possible|Questionable] [mild |]cardiomegaly", "Heart size [possibly|likely] [mildly |]enlarged",
    ],
    "detail": ["The left heart border is [displaced laterally|prominent]",
               "The left ventricular contour is [prominent|rounded]"],
}
DESC = {  # consolidation descriptors by the vocabulary subtype's first word
    "bilateral": ["", "multifocal", "patchy"], "reticular": ["reticular", "reticular", ""],
    "retrocardiac": ["", "dense", "patchy"], "patchy": ["patchy", "patchy", "multifocal", "ill-defined"],
    "airspace": ["airspace", "alveolar", "confluent", ""], "partial": ["partial", "segmental", "subsegmental", ""],
}
CONSOLIDATION = {
    "findings": [
        "[There is|There is a region of|Again seen is|There is an area of] {chg} {sz} {desc} consolidation {where}",
        "{chg} {sz} {desc} consolidation {where}", "{chg} {sz} {adj} {desc} consolidation",
        "{desc} [airspace opacity|opacity|opacification|airspace opacification] {where} "
        "[consistent with|compatible with|in keeping with] consolidation", "{sz} {desc} airspace disease {where}",
        "[Focal|Dense|Confluent] [opacification|airspace opacity] {where} with air bronchograms",
        "{sz} {adj} consolidation {tail}", "{adj} consolidation[ with air bronchograms|]",
    ],
    "impression": [
        "{chg} {sz} {adj} consolidation", "{adj} consolidation[, {tail}|]", "{adj} [airspace disease|opacity]",
        "{chg} {adj} [airspace |]consolidation",
    ],
    "pneumonia": [", [concerning for|suspicious for|likely representing|which may reflect] [pneumonia|infection]",
                  ", [consistent with|compatible with] pneumonia",
                  ". Findings [may reflect|are concerning for|are suspicious for] [pneumonia|infection] in the "
                  "[appropriate|proper] clinical setting"],
    "hedged": [
        "[Subtle|Faint|Ill-defined|Hazy] opacity {where}; [early consolidation cannot be excluded|cannot exclude "
        "early consolidation]", "[Possible|Questionable|Possible early] consolidation {where}",
        "{adj} opacity [may represent|could reflect|possibly representing] [early |]consolidation",
        "[Subtle|Faint] {adj} [airspace |]opacity, [possibly|likely] consolidation",
    ],
    "hedged_impression": ["[Possible|Questionable] {adj} consolidation", "Cannot exclude early consolidation {where}",
                          "{adj} opacity, [possibly|probably] early consolidation[ or pneumonia|]"],
}
EDEMA = {
    "findings": [
        "{chg} {sz} pulmonary edema", "{chg} {sz} interstitial [pulmonary |]edema",
        "There is {chg} {sz} [interstitial |alveolar |]edema",
        "{sz} [pulmonary |]vascular congestion [with|and] [mild |]interstitial edema",
        "[Diffuse|Bilateral|Symmetric] [hazy |perihilar |interstitial ]opacities "
        "[consistent with|compatible with|in keeping with] {sz} [interstitial |pulmonary |]edema",
        "{sz} [prominence|indistinctness|engorgement] of the pulmonary [vasculature|vessels] with "
        "[Kerley B lines|peribronchial cuffing|perihilar haziness]",
        "[Perihilar haziness|Peribronchial cuffing|Septal thickening] [and|with] [Kerley B lines|vascular "
        "indistinctness|cephalization of the vessels]",
        "Findings are [consistent with|compatible with] {sz} [congestive heart failure|fluid overload|volume overload]",
        "{sz} [interstitial |]edema {tail}",
    ],
    "impression": ["{chg} {sz} [pulmonary |interstitial |]edema", "{sz} [fluid overload|congestive heart failure]",
                   "{sz} [vascular congestion and |]interstitial edema", "{chg} {sz} edema"],
    "hedged": ["[Possible|Questionable|Possible early] [mild |minimal ]interstitial edema",
               "Mild vascular congestion; [early |mild ]edema cannot be excluded",
               "[Hazy|Indistinct] perihilar [opacities|vessels] may [reflect|represent] [early |mild |]edema",
               "[Possible|Questionable] [mild |]pulmonary vascular congestion"],
    "hedged_impression": [
        "[Possible|Questionable] [mild |]edema", "[Possible|Questionable] [early |]interstitial edema",
        "Possible mild pulmonary edema",
    ],
    "detail": ["Kerley B lines are [seen|present] at the lung bases", "There is [mild |]peribronchial cuffing"],
}
EFFUSION = {
    "findings": [
        "{there} {chg} {sz} {side} {noun}", "{chg} {sz} {side} {noun}", "{sz} {noun} {onside}",
        "[Blunting of the|Blunted] {side} costophrenic angle{s}[ with a meniscus|, consistent with {sz} {noun}|]",
        "{sz} [amount of |volume of ]fluid [layering|tracking] [along|in] the {side} [pleural space|"
        "hemithorax|lateral chest wall]", "{sz} {side} pleural fluid[ collection|]", "The {sz} {side} {noun} {tail}",
        "{chg} {side} {noun} {verb} {sz}",
    ],
    "subpulmonic": ["{sz} {side} subpulmonic [pleural |]effusion",
                    "Apparent elevation of the {side} hemidiaphragm [reflects|is due to] a {sz} subpulmonic effusion"],
    "impression": ["{chg} {sz} {side} {noun}", "{side} {noun}[, {tail}|]", "{sz} {side} {noun}",
                   "[Layering|Small amount of] {side} pleural fluid"],
    "hedged": [
        "Possible {sz} {side} [pleural |]effusion",
        "[Blunting|Mild blunting] of the {side} costophrenic angle [may reflect|could reflect|possibly "
        "reflecting] a [small|tiny|trace] [pleural |]effusion", "[Questionable|Possible] trace {side} pleural fluid",
        "A [small|trace] {side} pleural effusion cannot be excluded",
    ],
    "hedged_impression": [
        "[Possible|Questionable] {sz} {side} pleural effusion", "Cannot exclude a [small|trace] {side} effusion",
    ],
}
PNEUMOTHORAX = {
    "findings": [
        "[There is a|A] {chg} {sz} {side} [apical |apicolateral |]pneumothorax", "{chg} {sz} {side} pneumothorax",
        "{sz} pneumothorax [at|along] the {side} [apex|lung apex|lateral chest wall]",
        "A [thin |]visceral pleural line is [seen|visible] [at|near] the {side} apex[ with no lung "
        "markings beyond it|]", "{side} pneumothorax [measuring up to {cm} cm|measuring approximately {cm} cm|]",
    ],
    "impression": ["{chg} {sz} {side} pneumothorax", "{side} pneumothorax[, {tail}|]",
                   "{sz} {side} [apical |]pneumothorax[; [findings|this] [were|was] [discussed with|communicated to] "
                   "Dr. ___ [at ___|]|]"],
}
LESION = {
    "findings": [
        "There is a {cm} cm [well-circumscribed |spiculated |lobulated |rounded |]{kind} {where}",
        "A {cm} cm [{kind}|nodular opacity|rounded opacity|lesion] [is seen|is present|is noted|projects] {where}",
        "[Rounded|Nodular|Round] opacity measuring {cm} cm {where}", "{chg} {cm} cm {adj} {kind}",
    ],
    "impression": ["{cm} cm {adj} {kind}; [chest CT is recommended for further evaluation|recommend CT for further "
                   "characterization|further evaluation with chest CT is advised]", "{adj} {kind}[, {tail}|]",
                   "[Pulmonary|Lung] {kind} {where}[, new|, not seen previously|, unchanged|]"],
}
DEVICES = {
    "ett": ["Endotracheal tube [terminates|ends|is seen] [approximately |about |]{n} cm above the carina",
            "The endotracheal tube tip is [approximately |]{n} cm [above|from] the carina",
            "ET tube in [standard|appropriate] position, [its tip|the tip] {n} cm above the carina"],
    "enteric": [
        "[Enteric|Nasogastric|Feeding|Orogastric] tube [courses|passes|extends] below the diaphragm[ with the tip "
        "in the stomach| into the stomach|, tip not visualized|]",
        "An [enteric|NG|OG] tube [terminates|ends] in the stomach",
    ],
    "picc": ["{Side}-sided PICC line [terminates|ends|has its tip] in the [mid|lower|distal] SVC",
             "{Side} [upper extremity |]PICC [line |]tip [is in|projects over] the [mid|lower|distal] SVC",
             "A {side} PICC [line |]terminates at the cavoatrial junction"],
    "pacemaker": ["Left-sided [pacemaker|pacer|dual-chamber pacemaker|cardiac device] with leads [in|terminating in] "
                  "the right atrium and right ventricle",
                  "[Left chest wall|Left-sided] [pacemaker|pacer] [device |]with "
                  "[two |]leads[ in standard position| in expected position|]"],
    "ecg": ["[ECG|EKG|Monitoring|Cardiac monitoring] leads [overlie|project over] the chest",
            "External [monitoring |]leads [overlie|project over] the [chest|thorax]"],
    "impression": ["Support devices in [standard|appropriate|expected] position",
                   "[Lines and tubes|Tubes and lines] [as above|in standard position|are unchanged in position]",
                   "[Medical |]devices [are |]in [appropriate|satisfactory] position"],
}
MEDIASTINUM = ["The [cardiomediastinal silhouette|mediastinum|upper mediastinum] is [widened|enlarged|prominent]",
               "[Widened|Prominent|Enlarged] [upper |superior |]mediastinum",
               "[The |]mediastinal contours are [widened|prominent]"]

# ---- normal statements: (template, the labels it reports absent by name) -------------------------
HEART_NORMAL = [("Heart size is normal", ("Cardiomegaly",)), ("The heart is normal in size", ("Cardiomegaly",)),
                ("Normal heart size", ("Cardiomegaly",)), ("Heart size is within normal limits", ("Cardiomegaly",)),
                ("The cardiac silhouette is [normal in size|not enlarged|within normal limits]", ("Cardiomegaly",)),
                ("No cardiomegaly", ("Cardiomegaly",)), ("The heart is not enlarged", ("Cardiomegaly",)),
                ("Heart size [is|remains] [normal|stable]", ("Cardiomegaly",))]
MEDIASTINUM_NORMAL = [
    (
        "The [mediastinal and hilar|cardiomediastinal and hilar|hilar and mediastinal] contours are "
        "[normal|unremarkable|within normal limits]", ("Enlarged Cardiomediastinum",),
    ),
    ("[Normal|Unremarkable] cardiomediastinal silhouette", ("Enlarged Cardiomediastinum",)),
    (
        "The cardiomediastinal silhouette is [stable|unremarkable|normal|within normal limits]",
        ("Enlarged Cardiomediastinum",),
    ),
    ("The mediastinum is not widened", ("Enlarged Cardiomediastinum",)),
    ("Hilar contours are [normal|unremarkable]", ()), ("The trachea is midline", ()),
]
HEART_AND_MEDIASTINUM_NORMAL = [
    (
        "Heart size and mediastinal contours are [normal|within normal limits|unremarkable]",
        ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    ),
    (
        "The cardiac and mediastinal [silhouettes|contours] are [unremarkable|normal|stable]",
        ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    ),
    ("[Normal|Unremarkable] heart size and mediastinal contours", ("Cardiomegaly", "Enlarged Cardiomediastinum")),
]
PLEURA_NORMAL = [
    (
        "[There is no|No] [focal consolidation|consolidation], pleural effusion or pneumothorax",
        ("Consolidation", "Pleural Effusion", "Pneumothorax"),
    ),
    (
        "No [focal consolidation|consolidation], [effusion|pleural effusion], or pneumothorax",
        ("Consolidation", "Pleural Effusion", "Pneumothorax"),
    ),
    (
        "[The lungs are clear|Lungs are clear] without [focal consolidation|consolidation], effusion, or pneumothorax",
        ("Consolidation", "Pleural Effusion", "Pneumothorax"),
    ),
]
CONSOLIDATION_NORMAL = [("No [focal|confluent|lobar|] consolidation[ is seen| is identified|]", ("Consolidation",)),
                        ("There is no [focal |]consolidation", ("Consolidation",)),
                        ("No [focal |]consolidation to suggest pneumonia", ("Consolidation", "Pneumonia")),
                        ("[The lungs are clear|Lungs are clear] without [focal |]consolidation", ("Consolidation",)),
                        ("No [focal |]airspace consolidation", ("Consolidation",))]
OPACITY_NORMAL = [
    ("No [focal |]airspace disease", ("Lung Opacity",)), ("No focal opacity", ("Lung Opacity",)),
    ("No [focal |]opacity [to suggest pneumonia|concerning for pneumonia]", ("Lung Opacity", "Pneumonia")),
]
EFFUSION_PNEUMOTHORAX_NORMAL = [
    ("[There is no|No] pleural effusion or pneumothorax", ("Pleural Effusion", "Pneumothorax")),
    ("No [pleural effusion|effusion] or pneumothorax [is seen|is identified|]", ("Pleural Effusion", "Pneumothorax")),
    ("No pneumothorax or [pleural effusion|effusion]", ("Pleural Effusion", "Pneumothorax")),
    ("There is no [evidence of |]pneumothorax or [pleural |]effusion", ("Pleural Effusion", "Pneumothorax")),
    ("Pleural effusion and pneumothorax are absent", ("Pleural Effusion", "Pneumothorax")),
]
EFFUSION_NORMAL = [("No [pleural effusion|effusion|pleural effusions|effusions]", ("Pleural Effusion",)),
                   ("There is no [evidence of |][pleural effusion|effusion]", ("Pleural Effusion",)),
                   ("Pleural effusion is not [seen|identified|present]", ("Pleural Effusion",)),
                   ("No [large|significant|definite] pleural effusion", ("Pleural Effusion",)),
                   ("Negative for pleural effusion", ("Pleural Effusion",)), ("The costophrenic angles are sharp", ()),
                   ("Costophrenic angles are [sharp|clear|preserved]", ())]
PNEUMOTHORAX_NORMAL = [("No pneumothorax", ("Pneumothorax",)), ("There is no pneumothorax", ("Pneumothorax",)),
                       ("No [evidence of |]pneumothorax [is seen|is identified|]", ("Pneumothorax",)),
                       ("Pneumothorax is not [seen|identified|present]", ("Pneumothorax",)),
                       ("No [apical|visible] pneumothorax", ("Pneumothorax",))]
EDEMA_NORMAL = [("No pulmonary edema", ("Edema",)), ("No [evidence of |signs of |][interstitial |]edema", ("Edema",)),
                ("There is no [pulmonary vascular congestion|vascular congestion] or edema", ("Edema",)),
                ("No [overt|frank] [pulmonary |interstitial ]edema", ("Edema",)),
                ("No [pulmonary |]vascular congestion", ("Edema",)),
                ("[The |]pulmonary vasculature is [normal|not engorged|unremarkable]", ()),
                ("No [evidence of |]congestive heart failure", ("Edema",)), ("No signs of fluid overload", ())]
LUNGS_NORMAL = [("The lungs are clear", ()), ("Lungs are [well expanded|well aerated] and clear", ()),
                ("The lungs are [well expanded|well inflated|clear bilaterally]", ()), ("Clear lungs", ()),
                ("The lungs are clear [of|without] [focal |]airspace disease", ("Lung Opacity",))]
LESION_NORMAL = [("No [suspicious |]pulmonary [nodule|nodules][ or mass| or masses|]", ("Lung Lesion",)),
                 ("No [focal |]pulmonary [nodules|mass]", ("Lung Lesion",))]
BONES_NORMAL = [("No acute osseous abnormality", ()), ("[The |]osseous structures are [intact|unremarkable]", ()),
                ("No [displaced|acute] fracture [is identified|is seen|]", ("Fracture",)),
                ("No [acute |displaced |]rib [fracture is seen|fractures are seen|fracture]", ("Fracture",)),
                ("Bony structures are [intact|unremarkable]", ())]
INCIDENTAL = [
    ("[Mild|Moderate|] [multilevel |]degenerative changes [are seen |are present |]in the thoracic spine", ()),
    ("The aorta is [mildly |]tortuous[ and calcified|]", ()),
    ("[Atherosclerotic calcification|Calcification] of the aortic [arch|knob]", ()),
    ("[The |]visualized upper abdomen is unremarkable", ()),
    ("No free air [below|under] the [right |]hemidiaphragm[s|]", ()),
    ("Low lung volumes[ with bronchovascular crowding|]", ()),
    ("Calcified granuloma [in|at] the [right|left] [upper|mid|lower] [lung|lobe]", ()),
    ("[Mild|] [thoracic |]kyphosis[ is noted|]", ()), ("[Mild |]scoliosis of the thoracic spine", ()),
    ("[Nipple shadows|Bilateral nipple shadows] project over the lung bases", ()),
    ("A skin fold projects over the [right|left] [hemithorax|lower chest]", ()),
    (
        "[The |]study is limited by [patient rotation|motion|low lung volumes|portable technique|"
        "overlying soft tissue]", (),
    ),
    ("[Mild |]elevation of the [right|left] hemidiaphragm[ is unchanged| is chronic|]", ()),
    ("[Hyperinflated|Hyperexpanded] lungs[ with flattening of the hemidiaphragms|]", ()),
    ("[Emphysematous|Chronic obstructive] changes [are seen |]in the upper lobes", ()),
    ("Prominence of the [right|left] hilum[ is likely vascular|, unchanged|]", ()),
    ("[Dense|Coarse] calcification of the [mitral annulus|aortic valve]", ()),
    ("[Cholecystectomy|Surgical] changes in the right upper quadrant", ()),
    ("Glenohumeral [degenerative changes|osteoarthritis] [on the right|on the left|bilaterally]", ()),
    ("Postsurgical changes of the [right|left] [chest wall|axilla|breast]", ()),
    ("[The |]partially imaged [cervical|lumbar] spine [is unremarkable|demonstrates degenerative change]", ()),
    ("[An |]azygos fissure is [noted|incidentally noted|again seen]", ()),
    ("Gaseous distension of the [stomach|colon|splenic flexure] [is noted|]", ()),
    ("[Single|Portable] [frontal|upright|semi-upright|supine] view of the chest [was obtained|is provided]", ()),
    ("The [left|right] costophrenic angle is [excluded from|not included on] the [image|film|field of view]", ()),
    ("Thyroid [enlargement|goiter] [deviates|mildly deviates] the trachea to the [right|left]", ()),
    ("[Old|Remote] [healed |]deformity of the [right|left] [clavicle|scapula|humerus]", ()),
    ("Suture material projects over the [right|left] [upper|lower] [hemithorax|axilla]", ()),
]
COMPARISON = ["{lead}, there is no significant interval change",
              "{lead}, the findings are [similar|unchanged|not significantly changed]",
              "{lead}, there has been no [significant |]change",
              "{lead}, [there has been |]interval [change|progression|improvement] [as described below|as follows|]"]
RESOLVED = ["[Interval resolution of|Resolution of] [the |]previously [seen|noted|described] {phrase}",
            "[The lungs are clear|There is no residual {phrase}] after resolution of the prior {phrase}"]
RESOLVED_PHRASE = {
    "Atelectasis": ["atelectasis", "basilar atelectasis"], "Consolidation": ["consolidation"],
    "Edema": ["edema", "interstitial edema", "vascular congestion"],
    "Pleural Effusion": ["pleural effusion", "effusion", "pleural effusions"],
    "Pneumothorax": ["pneumothorax", "apical pneumothorax"],
}
NORMAL_IMPRESSIONS = [
    ("No acute cardiopulmonary process", ()), ("No acute cardiopulmonary abnormality", ()),
    ("No acute intrathoracic process", ()), ("No [radiographic |]evidence of acute cardiopulmonary disease", ()),
    ("[Normal|Unremarkable] chest radiograph", ()), ("No acute [chest |]findings", ()),
    ("No [radiographic |]evidence of pneumonia", ("Pneumonia",)),
    ("[No significant interval change|Stable chest radiograph][ without acute abnormality|]", ()),
    ("No acute [cardiopulmonary |]process[ since the prior study|]", ()),
]
