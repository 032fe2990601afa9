"""The paper's tables: specifications (:mod:`.spec`), grids of cells (:mod:`.grid`), running
them (:mod:`.reproduce`), and the report and plots of their run folders (:mod:`.report`,
:mod:`.plots`)."""
