"""HTML reports from stored result frames (a later issue); see README.md."""
