"""The operation library of the built-in code world.

A world function is a chain of one to four operations. Each operation turns a value of one
type into a value of another and knows three things about itself: its Python source (an
expression, or a few statements), the English phrases that describe it in a `gen` spec, and
which constants it may take. Variables are fixed per type so that a chain renders as plain
Python: a list is `xs`, an integer `n`, a string `s` (bool only ever appears in `return`).

Every phrase, once its constants are filled in, names exactly one operation, so a spec
determines its function (the world relies on this to keep its splits disjoint).
"""

from __future__ import annotations

from dataclasses import dataclass

VAR = {"list": "xs", "int": "n", "str": "s"}   # the variable that holds a value of each type
LETTERS = "abeilmnorstu"                        # alphabet of world strings (vowel-rich)


@dataclass(frozen=True)
class Op:
    """One operation.

    name:    unique id, recorded in Task.meta["ops"].
    src:     input type: "list", "int" or "str".
    dst:     output type: "list", "int", "str" or "bool" (bool ends a chain).
    code:    an expression (stmt=False) or statement lines (stmt=True, `{out}` is the output
             variable); both may use the constants `{k}` (int) and `{c}`, `{d}` (letters).
    phrases: spec phrases, filled with the same constants; one is drawn per task.
    ks:      the values `{k}` may take (empty when the code has no `{k}`).
    """

    name: str
    src: str
    dst: str
    code: str
    phrases: tuple[str, ...]
    ks: tuple[int, ...] = ()
    stmt: bool = False

    @property
    def letters(self) -> int:
        """How many letter constants ({c}, {d}) the op takes."""
        return ("{c}" in self.code) + ("{d}" in self.code)


def _op(name, src, dst, code, *phrases, ks=(), stmt=False) -> Op:
    return Op(name, src, dst, code, tuple(phrases), tuple(ks), stmt)


OPS: tuple[Op, ...] = (
    # list -> list
    _op("scale", "list", "list", "[x * {k} for x in xs]",
        "multiply each item by {k}", "scale every element by {k}", ks=(2, 3, 4)),
    _op("shift", "list", "list", "[x + {k} for x in xs]",
        "add {k} to each item", "increase every element by {k}", ks=(1, 2, 3, 4, 5)),
    _op("unshift", "list", "list", "[x - {k} for x in xs]",
        "subtract {k} from each item", "decrease every element by {k}", ks=(1, 2, 3, 4, 5)),
    _op("square", "list", "list", "[x * x for x in xs]",
        "square each item", "replace every element by its square"),
    _op("mod", "list", "list", "[x % {k} for x in xs]",
        "take each item modulo {k}", "replace every element by its remainder mod {k}", ks=(2, 3, 4, 5)),
    _op("div", "list", "list", "[x // {k} for x in xs]",
        "divide each item by {k}, rounding down", "floor-divide every element by {k}", ks=(2, 3)),
    _op("keep_gt", "list", "list", "[x for x in xs if x > {k}]",
        "keep the items greater than {k}", "drop every element that is not above {k}", ks=tuple(range(9))),
    _op("keep_lt", "list", "list", "[x for x in xs if x < {k}]",
        "keep the items less than {k}", "drop every element that is {k} or more", ks=tuple(range(2, 10))),
    _op("keep_even", "list", "list", "[x for x in xs if x % 2 == 0]",
        "keep the even items", "drop the odd elements"),
    _op("keep_odd", "list", "list", "[x for x in xs if x % 2 == 1]",
        "keep the odd items", "drop the even elements"),
    _op("sort", "list", "list", "sorted(xs)",
        "sort the items", "put the elements in increasing order"),
    _op("sort_desc", "list", "list", "sorted(xs, reverse=True)",
        "sort the items in decreasing order", "order the elements from largest to smallest"),
    _op("reverse", "list", "list", "xs[::-1]",
        "reverse the items", "flip the order of the elements"),
    _op("drop", "list", "list", "xs[{k}:]",
        "drop the first {k} items", "skip the first {k} elements", ks=(1, 2)),
    _op("take", "list", "list", "xs[:{k}]",
        "keep the first {k} items", "take only the first {k} elements", ks=(2, 3)),
    _op("every_other", "list", "list", "xs[::2]",
        "keep every second item, starting with the first", "keep the elements at even positions"),
    _op("diffs", "list", "list", "[b - a for a, b in zip(xs, xs[1:])]",
        "take the differences between neighbouring items", "replace the elements by their successive differences"),
    _op("unique", "list", "list", "sorted(set(xs))",
        "keep the distinct items in increasing order", "remove duplicate elements and sort"),
    _op("index_scale", "list", "list", "[x * i for i, x in enumerate(xs)]",
        "multiply each item by its position", "scale every element by its index"),
    _op("cap", "list", "list", "[min(x, {k}) for x in xs]",
        "cap each item at {k}", "limit every element to at most {k}", ks=(3, 4, 5, 6, 7, 8, 9)),
    _op("zero_small", "list", "list", "[x if x > {k} else 0 for x in xs]",
        "replace each item that is not above {k} with 0", "set every element of at most {k} to 0",
        ks=(1, 2, 3, 4, 5)),
    _op("append_sum", "list", "list", "xs + [sum(xs)]",
        "append the sum of the items", "add the total as a new last element"),
    _op("running", "list", "list",
        "ys = []\nt = 0\nfor x in xs:\n    t += x\n    ys.append(t)\n{out} = ys",
        "replace the items by their running totals", "turn the elements into prefix sums", stmt=True),
    # list -> int
    _op("sum", "list", "int", "sum(xs)", "add up the items", "compute the total of the elements"),
    _op("len", "list", "int", "len(xs)", "count the items", "compute the number of elements"),
    _op("max", "list", "int", "max(xs)", "compute the largest item", "find the maximum element"),
    _op("min", "list", "int", "min(xs)", "compute the smallest item", "find the minimum element"),
    _op("first", "list", "int", "xs[0]", "compute the first item", "take the element at the front"),
    _op("last", "list", "int", "xs[-1]", "compute the last item", "take the element at the end"),
    _op("count_gt", "list", "int", "len([x for x in xs if x > {k}])",
        "count the items greater than {k}", "compute how many elements exceed {k}", ks=tuple(range(8))),
    _op("count_eq", "list", "int", "xs.count({k})",
        "count how many items equal {k}", "compute the number of elements that are {k}", ks=tuple(range(6))),
    _op("span", "list", "int", "max(xs) - min(xs)",
        "compute the largest item minus the smallest", "find the range of the elements"),
    _op("product", "list", "int", "{out} = 1\nfor x in xs:\n    {out} *= x",
        "multiply the items together", "compute the product of the elements", stmt=True),
    _op("sum_even", "list", "int", "{out} = 0\nfor x in xs:\n    if x % 2 == 0:\n        {out} += x",
        "add up the even items", "compute the total of the even elements", stmt=True),
    _op("argmax", "list", "int", "xs.index(max(xs))",
        "compute the position of the largest item", "find the index of the maximum element"),
    # list -> bool
    _op("contains", "list", "bool", "{k} in xs",
        "tell whether {k} is among the items", "check if some element equals {k}", ks=tuple(range(8))),
    _op("all_gt", "list", "bool", "all(x > {k} for x in xs)",
        "tell whether every item is greater than {k}", "check that all elements exceed {k}", ks=(0, 1, 2, 3)),
    _op("any_even", "list", "bool", "any(x % 2 == 0 for x in xs)",
        "tell whether some item is even", "check if any element is even"),
    _op("is_sorted", "list", "bool", "xs == sorted(xs)",
        "tell whether the items are in increasing order", "check if the elements are sorted"),
    # int -> int
    _op("imul", "int", "int", "n * {k}", "multiply the number by {k}", "scale the value by {k}", ks=(2, 3, 4)),
    _op("iadd", "int", "int", "n + {k}", "add {k} to the number", "increase the value by {k}", ks=(1, 2, 3, 4, 5)),
    _op("isub", "int", "int", "n - {k}", "subtract {k} from the number", "decrease the value by {k}",
        ks=(1, 2, 3, 4, 5)),
    _op("idiv", "int", "int", "n // {k}", "divide the number by {k}, rounding down",
        "floor-divide the value by {k}", ks=(2, 3, 4)),
    _op("imod", "int", "int", "n % {k}", "take the number modulo {k}", "compute the remainder of the value mod {k}",
        ks=(2, 3, 4, 5, 7)),
    _op("isquare", "int", "int", "n * n", "square the number", "multiply the value by itself"),
    _op("absdiff", "int", "int", "abs(n - {k})", "take the distance from the number to {k}",
        "compute how far the value is from {k}", ks=(3, 5, 7, 10)),
    _op("imax", "int", "int", "max(n, {k})", "raise the number to at least {k}",
        "compute the larger of the value and {k}", ks=(3, 5, 7)),
    _op("imin", "int", "int", "min(n, {k})", "cap the number at {k}",
        "compute the smaller of the value and {k}", ks=(4, 6, 8)),
    _op("trisum", "int", "int", "sum(range(n))", "add up the numbers from 0 to n - 1",
        "compute the total of all values below the number"),
    _op("digitsum", "int", "int", "sum(int(d) for d in str(n))", "add up the digits of the number",
        "compute the digit sum of the value"),
    _op("branch", "int", "int", "if n > {k}:\n    {out} = n - {k}\nelse:\n    {out} = n + {k}",
        "subtract {k} if the number is above {k}, otherwise add {k}",
        "lower the value by {k} when it exceeds {k}, else raise it by {k}", ks=(3, 5, 8), stmt=True),
    _op("collatz", "int", "int", "if n % 2 == 0:\n    {out} = n // 2\nelse:\n    {out} = 3 * n + 1",
        "halve the number if it is even, otherwise triple it and add 1",
        "apply one Collatz step to the value", stmt=True),
    # int -> list
    _op("range", "int", "list", "list(range(n))", "list the numbers from 0 to n - 1",
        "build the list of values below the number"),
    _op("multiples", "int", "list", "[i * {k} for i in range(n)]", "list the first n multiples of {k}",
        "build n multiples of {k}, starting at 0", ks=(2, 3, 5)),
    _op("squares", "int", "list", "[i * i for i in range(n)]", "list the squares of 0 to n - 1",
        "build the squares of the values below the number"),
    _op("digits", "int", "list", "[int(d) for d in str(n)]", "list the digits of the number",
        "split the value into its digits"),
    # int -> bool
    _op("divisible", "int", "bool", "n % {k} == 0", "tell whether the number is divisible by {k}",
        "check if the value is a multiple of {k}", ks=(2, 3, 4, 5)),
    _op("igt", "int", "bool", "n > {k}", "tell whether the number is greater than {k}",
        "check if the value exceeds {k}", ks=(3, 5, 7, 9)),
    # int -> str
    _op("tostr", "int", "str", "str(n)", "write the number as text", "turn the value into a string"),
    _op("stars", "int", "str", "'*' * n", "make a string of n stars", "repeat '*' as many times as the value"),
    # str -> str
    _op("upper", "str", "str", "s.upper()", "convert the text to upper case", "capitalize every letter"),
    _op("sreverse", "str", "str", "s[::-1]", "reverse the text", "flip the order of the characters"),
    _op("replace", "str", "str", "s.replace('{c}', '{d}')", "replace every '{c}' with '{d}'",
        "change each letter '{c}' into '{d}'"),
    _op("sdrop", "str", "str", "s[{k}:]", "drop the first {k} characters", "skip the first {k} letters", ks=(1, 2)),
    _op("stake", "str", "str", "s[:{k}]", "keep the first {k} characters", "take only the first {k} letters",
        ks=(2, 3, 4)),
    _op("sdouble", "str", "str", "s + s", "repeat the text twice", "append the text to itself"),
    _op("novowels", "str", "str", "''.join(c for c in s if c not in 'aeiou')", "remove the vowels",
        "delete every vowel from the text"),
    _op("ssort", "str", "str", "''.join(sorted(s))", "sort the characters",
        "put the letters in alphabetical order"),
    _op("dashes", "str", "str", "'-'.join(s.split())", "join the words with dashes",
        "put a dash between the words"),
    _op("nospace", "str", "str", "s.replace(' ', '')", "remove the spaces", "glue the words together"),
    _op("stutter", "str", "str", "''.join(c * 2 for c in s)", "double every character",
        "write each letter twice"),
    _op("initials", "str", "str", "''.join(w[0] for w in s.split())", "take the first letter of each word",
        "keep the initials of the words"),
    _op("wreverse", "str", "str", "' '.join(s.split()[::-1])", "reverse the order of the words",
        "put the words backwards"),
    # str -> int
    _op("slen", "str", "int", "len(s)", "count the characters", "compute the length of the text"),
    _op("scount", "str", "int", "s.count('{c}')", "count the letters '{c}'",
        "compute how often '{c}' occurs"),
    _op("vowels", "str", "int", "sum(1 for c in s if c in 'aeiou')", "count the vowels",
        "compute the number of vowels in the text"),
    _op("words", "str", "int", "len(s.split())", "count the words", "compute the number of words"),
    _op("find", "str", "int", "s.find('{c}')", "compute the position of the first '{c}', or -1",
        "find where '{c}' first occurs"),
    # str -> list
    _op("wordlens", "str", "list", "[len(w) for w in s.split()]", "list the lengths of the words",
        "measure each word"),
    _op("positions", "str", "list", "[i for i, c in enumerate(s) if c == '{c}']",
        "list the positions of the letter '{c}'", "collect the indices where '{c}' occurs"),
    # str -> bool
    _op("palindrome", "str", "bool", "s == s[::-1]", "tell whether the text is a palindrome",
        "check if the text reads the same backwards"),
    _op("startswith", "str", "bool", "s.startswith('{c}')", "tell whether the text starts with '{c}'",
        "check if the first letter is '{c}'"),
    _op("has", "str", "bool", "'{c}' in s", "tell whether the text contains '{c}'",
        "check if the letter '{c}' occurs"),
)

OPS_BY_NAME = {op.name: op for op in OPS}
assert len(OPS_BY_NAME) == len(OPS), "op names must be unique"
