"""Slot vocabularies shared by the tasks (our own lists; the papers' list sizes are noted where they
matter). Every entry is one word, so each is one token in the toy vocabulary; for GPT-2 the tasks
filter them to the token counts the papers require."""

# First names. Wang/APP use ~100 single-GPT-2-token names; ours are common English first names.
NAMES = (
    "Aaron Adam Alan Alex Alice Amy Andrew Anna Anne Arthur Barbara Ben Beth Bill Bob Brian "
    "Carl Carol Charles Chris Clara Daniel David Dean Diana Edward Elizabeth Emily Emma Eric "
    "Frank Gary George Grace Harry Helen Henry Jack Jacob James Jane Jason Jeff Jennifer "
    "Jessica Jim Joe John Joseph Julia Kate Kevin Laura Linda Lisa Louis Lucy Mark Martin Mary "
    "Matt Michael Mike Nancy Nick Oliver Paul Peter Rachel Richard Robert Rose Ryan Sam Sarah "
    "Scott Sean Simon Sophie Steve Susan Thomas Tim Tom Victor Victoria William"
).split()

# Gendered Pronouns: APP's names (10 + 10), and an extended set (40 + 40, APP's first) so the
# toy suite has enough distinct prompts for disjoint splits and a held-out training corpus.
MALE_NAMES = "John David Mark Paul Ryan Gary Jack Sean Carl Joe".split()
FEMALE_NAMES = "Mary Lisa Anna Sarah Amy Carol Karen Susan Julie Judy".split()
MALE_NAMES_EXTENDED = (
    MALE_NAMES
    + (
        "Adam Alan Andrew Arthur Ben Bill Bob Brian Charles Daniel Edward Eric Frank George Harry "
        "Henry Jacob James Jason Kevin Louis Martin Michael Nick Oliver Peter Richard Robert Simon "
        "Steve"
    ).split()
)
FEMALE_NAMES_EXTENDED = (
    FEMALE_NAMES
    + (
        "Alice Anne Barbara Beth Clara Diana Elizabeth Emily Emma Grace Helen Jane Jennifer "
        "Jessica Julia Kate Laura Linda Lucy Nancy Rachel Rose Sophie Victoria Ella Hannah Megan "
        "Olivia Ruth Zoe"
    ).split()
)

SURNAMES = (
    "Smith Brown Jones Miller Davis Wilson Moore Taylor Anderson Thomas Jackson White Harris "
    "Martin Thompson Garcia Clark Lewis Walker Hall Allen Young King Wright Scott Green Baker "
    "Adams Nelson Carter Mitchell Roberts Turner Phillips Campbell Parker Evans Edwards Collins "
    "Stewart Morris"
).split()

# IOI (Wang et al.'s lists).
IOI_PLACES = ("store garden restaurant school hospital office house station").split()
IOI_OBJECTS = ("ring kiss bone basketball computer necklace drink snack").split()

# Induction (APP's lists; "train station" and "5 o'clock" are multi-word on purpose).
INDUCTION_PLACES = [
    "kitchen",
    "restaurant",
    "library",
    "office",
    "school",
    "garden",
    "park",
    "store",
    "airport",
    "train station",
    "hospital",
    "cafe",
    "bakery",
    "theater",
    "stadium",
    "beach",
    "zoo",
    "museum",
    "garage",
    "supermarket",
]
INDUCTION_TIMES = ["night", "noon", "5 o'clock", "midnight"]
INDUCTION_OBJECTS = ("ring cup bone basketball computer necklace drink snack").split()

# Greater-Than nouns (events that last; our own list in the style of Hanna et al.'s).
GT_NOUNS = (
    "war reign dynasty empire alliance truce siege famine drought plague expedition voyage "
    "pilgrimage campaign rebellion revolution crusade occupation embargo blockade treaty "
    "partnership marriage apprenticeship journey tour exile strike boycott festival contract "
    "collaboration construction renovation excavation migration settlement conflict trial "
    "mission"
).split()

# Docstring: single-token argument names and description words (ours).
CODE_VARIABLES = (
    "data file name path size count index value key item node text line query user config model "
    "table field image color shape mode state order level limit offset token buffer source "
    "target result message option width height label group"
).split()
CODE_WORDS = (
    "the a new old first last current default given input output number list string object "
    "function method type class format address system server client record event process"
).split()
CODE_METHODS = ("get set load save update create delete check run build parse read write").split()

# Filler text for the toy corpus (simple sentences; no task structure).
FILLER_SUBJECTS = ["the man", "the woman", "a friend", "the teacher", "the child", "a doctor"]
FILLER_VERBS = ["saw", "liked", "found", "wanted", "bought", "visited", "remembered", "cleaned"]
FILLER_ADJECTIVES = ["old", "new", "big", "small", "quiet", "busy", "red", "happy"]

# Words of the position-shifting prefixes (no names, numbers or task words).
PREFIX_WORDS = [
    *(word for phrase in FILLER_SUBJECTS for word in phrase.split()),
    *FILLER_VERBS,
    *FILLER_ADJECTIVES,
    "house",
]
