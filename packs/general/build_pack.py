#!/usr/bin/env python3
"""Build the general reference set: common-knowledge multiple choice, written for CoWeSt.

Each item below lists its correct option first, then three wrong ones, so the
answers can be checked by reading this file. The options are then shuffled
with a fixed seed so the correct letters are spread evenly over A-D, and a
rerun reproduces the committed train.jsonl and test.jsonl byte for byte:

    python packs/general/build_pack.py

domain.yaml, README.md and corpus/ are written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 20250612
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for cowest_app

from cowest_app.domains.pack_items import write_splits  # noqa: E402

PREFIX = "general"
R, Q = "recall", "reasoning"

# (id, kind, question, correct option, three wrong options)
TEST = [
    # science
    ("sci-sodium-symbol", R, "What is the chemical symbol for sodium?", "Na", ["So", "Sd", "N"]),
    ("sci-photosynthesis-gas", R, "Which gas do plants take in from the air for photosynthesis?", "carbon dioxide", ["oxygen", "nitrogen", "hydrogen"]),
    ("sci-closest-planet", R, "Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Earth"]),
    ("sci-largest-planet", R, "Which is the largest planet in the Solar System?", "Jupiter", ["Saturn", "Neptune", "Earth"]),
    ("sci-boiling-point", R, "At sea level, at what temperature does pure water boil?", "100 °C", ["90 °C", "80 °C", "120 °C"]),
    ("sci-hardest-mineral", R, "Which is the hardest naturally occurring mineral?", "diamond", ["quartz", "topaz", "corundum"]),
    ("sci-oxygen-carrier", R, "Which blood cells carry oxygen around the human body?", "red blood cells", ["white blood cells", "platelets", "plasma cells"]),
    ("sci-blood-pump", R, "Which organ pumps blood around the human body?", "the heart", ["the liver", "the lungs", "the kidneys"]),
    ("sci-negative-particle", R, "Which particle of an atom carries a negative electric charge?", "electron", ["proton", "neutron", "photon"]),
    ("sci-unit-of-force", R, "What is the SI unit of force?", "newton", ["joule", "watt", "pascal"]),
    ("sci-adult-bones", R, "How many bones does a typical adult human skeleton have?", "206", ["186", "226", "306"]),
    ("sci-speed-of-light", R, "Roughly how fast does light travel in a vacuum?", "about 300,000 km per second", ["about 30,000 km per second", "about 3,000 km per second", "about 3,000,000 km per second"]),
    ("sci-scurvy", R, "A lack of which vitamin causes scurvy?", "vitamin C", ["vitamin A", "vitamin D", "vitamin K"]),
    ("sci-air-main-gas", R, "Which gas makes up most of the Earth's atmosphere?", "nitrogen", ["oxygen", "carbon dioxide", "argon"]),
    ("sci-water-formula", R, "What is the chemical formula of water?", "H2O", ["CO2", "H2O2", "NaCl"]),
    ("sci-evaporation", R, "What is it called when a liquid turns into a gas at its surface below its boiling point?", "evaporation", ["condensation", "sublimation", "melting"]),
    ("sci-red-planet", R, "Which planet is known as the Red Planet?", "Mars", ["Jupiter", "Venus", "Mercury"]),
    ("sci-atp-organelle", R, "Which part of a cell produces most of its energy in the form of ATP?", "the mitochondria", ["the nucleus", "the ribosomes", "the Golgi apparatus"]),
    ("sci-universal-donor", R, "Which red blood cell type is known as the universal donor?", "O negative", ["AB positive", "A positive", "B negative"]),
    ("sci-water-ph", R, "What is the pH of pure water at 25 °C?", "7", ["0", "1", "14"]),
    ("sci-orbits", R, "Which force keeps the planets in orbit around the Sun?", "gravity", ["magnetism", "friction", "the strong nuclear force"]),
    ("sci-whale-class", R, "To which class of animals do whales belong?", "mammals", ["fish", "amphibians", "reptiles"]),
    ("sci-dna", R, "What does DNA stand for?", "deoxyribonucleic acid", ["dinitrogen nucleic acid", "deoxyribose nitrate acid", "dynamic nucleic acid"]),
    ("sci-liquid-metal", R, "Which metal is liquid at room temperature?", "mercury", ["iron", "aluminium", "lead"]),
    ("sci-relativity", R, "Who developed the general theory of relativity?", "Albert Einstein", ["Isaac Newton", "Niels Bohr", "Galileo Galilei"]),
    ("sci-freezing-fahrenheit", R, "At what temperature on the Fahrenheit scale does water freeze?", "32 °F", ["0 °F", "100 °F", "212 °F"]),
    ("sci-leaf", R, "In most plants, which part carries out most of the photosynthesis?", "the leaves", ["the roots", "the flowers", "the seeds"]),
    ("sci-insulin", R, "Which organ produces insulin?", "the pancreas", ["the liver", "the spleen", "the thyroid"]),
    ("sci-sound-medium", R, "Through which of these does sound travel fastest?", "steel", ["air", "water", "a vacuum"]),
    ("sci-atomic-number-1", R, "Which element has atomic number 1?", "hydrogen", ["helium", "oxygen", "carbon"]),
    ("sci-feather-hammer", Q, "On the Moon, where there is no air, an astronaut drops a hammer and a feather from the same height at the same moment. What happens?", "They land at the same time", ["The hammer lands first", "The feather lands first", "The feather floats away"]),
    ("sci-ice-floats", Q, "Why does ice float on liquid water?", "Ice is less dense than liquid water", ["Ice is denser than liquid water", "Ice is colder than the water around it", "Ice molecules are lighter than water molecules"]),
    ("sci-ball-top", Q, "A ball is thrown straight up. What is its vertical speed at the very top of its flight?", "zero", ["its highest value", "the same as when it was thrown", "twice the speed it was thrown with"]),
    ("sci-lightning", Q, "Why do we usually see lightning before we hear the thunder it makes?", "Light travels much faster than sound", ["Thunder is made after the lightning has ended", "Sound travels faster than light", "Our ears react more slowly than our eyes"]),
    ("sci-dark-plant", Q, "A green plant is kept in a completely dark cupboard for several weeks. What is most likely to happen?", "It becomes pale and weak because it cannot photosynthesise", ["It grows faster than in sunlight", "It turns a darker green", "It stays exactly as it was"]),
    # geography
    ("geo-australia-capital", R, "What is the capital of Australia?", "Canberra", ["Sydney", "Melbourne", "Perth"]),
    ("geo-amazon", R, "Which is the longest river in South America?", "the Amazon", ["the Paraná", "the Orinoco", "the Magdalena"]),
    ("geo-largest-ocean", R, "Which is the largest ocean on Earth?", "the Pacific Ocean", ["the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean"]),
    ("geo-largest-country", R, "Which country has the largest land area?", "Russia", ["Canada", "China", "the United States"]),
    ("geo-canada-capital", R, "What is the capital of Canada?", "Ottawa", ["Toronto", "Vancouver", "Montreal"]),
    ("geo-everest-border", R, "Mount Everest lies on the border between Nepal and which other country?", "China", ["India", "Bhutan", "Pakistan"]),
    ("geo-japan-capital", R, "What is the capital of Japan?", "Tokyo", ["Kyoto", "Osaka", "Hiroshima"]),
    ("geo-hot-desert", R, "Which is the largest hot desert in the world?", "the Sahara", ["the Gobi", "the Kalahari", "the Arabian Desert"]),
    ("geo-egypt-continent", R, "On which continent does most of Egypt lie?", "Africa", ["Asia", "Europe", "Oceania"]),
    ("geo-brazil-capital", R, "What is the capital of Brazil?", "Brasília", ["Rio de Janeiro", "São Paulo", "Salvador"]),
    ("geo-marrakesh", R, "In which country is the city of Marrakesh?", "Morocco", ["Algeria", "Tunisia", "Egypt"]),
    ("geo-gibraltar", R, "Which strait separates Spain from Morocco, joining the Atlantic and the Mediterranean?", "the Strait of Gibraltar", ["the Bosporus", "the Strait of Hormuz", "the Bering Strait"]),
    ("geo-yen", R, "What is the currency of Japan?", "the yen", ["the won", "the yuan", "the ringgit"]),
    ("geo-largest-us-state", R, "Which US state has the largest area?", "Alaska", ["Texas", "California", "Montana"]),
    ("geo-kenya-capital", R, "What is the capital of Kenya?", "Nairobi", ["Mombasa", "Kampala", "Addis Ababa"]),
    ("geo-paris-river", R, "Which river flows through Paris?", "the Seine", ["the Loire", "the Rhône", "the Thames"]),
    ("geo-most-populous", R, "As of 2024, which country has the largest population?", "India", ["China", "the United States", "Indonesia"]),
    ("geo-urals", R, "Which mountain range is traditionally taken as the boundary between Europe and Asia in Russia?", "the Ural Mountains", ["the Alps", "the Carpathians", "the Andes"]),
    ("geo-egypt-capital", R, "What is the capital of Egypt?", "Cairo", ["Alexandria", "Luxor", "Giza"]),
    ("geo-smallest-continent", R, "Which is the smallest continent by land area?", "Australia", ["Europe", "Antarctica", "South America"]),
    ("geo-lake-victoria", R, "On which continent is Lake Victoria?", "Africa", ["Asia", "South America", "North America"]),
    ("geo-argentina-capital", R, "What is the capital of Argentina?", "Buenos Aires", ["Córdoba", "Santiago", "Montevideo"]),
    ("geo-istanbul", R, "In which country is the city of Istanbul?", "Turkey", ["Greece", "Iran", "Bulgaria"]),
    ("geo-time-zones", Q, "It is noon in London, on GMT. New York is five hours behind GMT. What time is it in New York?", "7 a.m.", ["5 p.m.", "5 a.m.", "7 p.m."]),
    ("geo-southern-summer", Q, "In which of these months is it summer in Australia?", "January", ["July", "June", "August"]),
    ("geo-map-scale", Q, "On a map with a scale of 1:100,000, two towns are 5 cm apart. How far apart are they in reality?", "5 km", ["50 km", "500 m", "50 m"]),
    # history
    ("his-moon-walk", R, "Who was the first person to walk on the Moon?", "Neil Armstrong", ["Buzz Aldrin", "Yuri Gagarin", "John Glenn"]),
    ("his-ww2-end", R, "In which year did the Second World War end?", "1945", ["1918", "1939", "1950"]),
    ("his-mona-lisa", R, "Who painted the Mona Lisa?", "Leonardo da Vinci", ["Michelangelo", "Raphael", "Rembrandt"]),
    ("his-giza", R, "Who built the Great Pyramid of Giza?", "the ancient Egyptians", ["the Romans", "the ancient Greeks", "the Persians"]),
    ("his-berlin-wall", R, "In which year did the Berlin Wall fall?", "1989", ["1961", "1975", "1991"]),
    ("his-first-us-president", R, "Who was the first President of the United States?", "George Washington", ["Thomas Jefferson", "Abraham Lincoln", "John Adams"]),
    ("his-printing-press", R, "Who introduced printing with movable metal type to Europe around 1440?", "Johannes Gutenberg", ["William Caxton", "Martin Luther", "Galileo Galilei"]),
    ("his-machu-picchu", R, "Which civilisation built Machu Picchu?", "the Inca", ["the Aztecs", "the Maya", "the Olmecs"]),
    ("his-first-woman-nobel", R, "Who was the first woman to win a Nobel Prize?", "Marie Curie", ["Ada Lovelace", "Florence Nightingale", "Rosalind Franklin"]),
    ("his-columbus", R, "In which year did Christopher Columbus first reach the Americas?", "1492", ["1066", "1588", "1776"]),
    ("his-french-revolution", R, "In which year did the French Revolution begin?", "1789", ["1689", "1815", "1848"]),
    ("his-origin-of-species", R, "Who wrote On the Origin of Species?", "Charles Darwin", ["Gregor Mendel", "Isaac Newton", "Louis Pasteur"]),
    ("his-vesuvius", R, "Which Roman town was buried by the eruption of Mount Vesuvius in AD 79?", "Pompeii", ["Athens", "Carthage", "Troy"]),
    ("his-statue-of-liberty", R, "Which country gave the Statue of Liberty to the United States?", "France", ["the United Kingdom", "Spain", "Italy"]),
    ("his-first-in-space", R, "Who was the first human to travel into space?", "Yuri Gagarin", ["Neil Armstrong", "Alan Shepard", "John Glenn"]),
    ("his-magna-carta", R, "In which year was Magna Carta sealed by King John of England?", "1215", ["1066", "1415", "1605"]),
    ("his-polio-vaccine", R, "Who developed the first widely used polio vaccine, introduced in 1955?", "Jonas Salk", ["Alexander Fleming", "Edward Jenner", "Louis Pasteur"]),
    ("his-mandela", R, "Of which country did Nelson Mandela become president in 1994?", "South Africa", ["Kenya", "Zimbabwe", "Namibia"]),
    ("his-titanic", R, "In which year did the Titanic sink?", "1912", ["1905", "1921", "1898"]),
    ("his-war-gap", Q, "The First World War ended in 1918 and the Second World War began in 1939. How many years lay between them?", "21", ["25", "17", "11"]),
    ("his-earliest", Q, "Which of these happened first?", "Gutenberg's printing press", ["the invention of the telephone", "the Wright brothers' first powered flight", "the first Moon landing"]),
    ("his-age", Q, "Someone was born in 1990. How old do they turn on their birthday in 2025?", "35", ["25", "34", "36"]),
    # everyday facts
    ("day-leap-year", R, "How many days are there in a leap year?", "366", ["365", "364", "360"]),
    ("day-hours-in-week", Q, "How many hours are there in a week?", "168", ["144", "148", "172"]),
    ("day-light-primaries", R, "Which are the three primary colours of light?", "red, green and blue", ["red, yellow and blue", "cyan, magenta and yellow", "orange, green and violet"]),
    ("day-hexagon", R, "How many sides does a hexagon have?", "6", ["5", "7", "8"]),
    ("day-88-keys", R, "Which instrument usually has 88 keys?", "the piano", ["the harp", "the violin", "the trumpet"]),
    ("day-football-team", R, "How many players does one football (soccer) team have on the pitch at the start of a match?", "11", ["9", "10", "12"]),
    ("day-shortest-month", R, "Which month has the fewest days?", "February", ["April", "June", "November"]),
    ("day-native-speakers", R, "Which language has the most native speakers in the world?", "Mandarin Chinese", ["English", "Spanish", "Hindi"]),
    ("day-guitar-strings", R, "How many strings does a standard guitar have?", "6", ["4", "5", "7"]),
    ("day-tennis-zero", R, "In tennis, what is a score of zero called?", "love", ["nil", "duck", "zip"]),
    ("day-flying-mammal", R, "Which of these is a mammal that can truly fly?", "the bat", ["the penguin", "the ostrich", "the flying fish"]),
    ("day-adult-teeth", R, "How many teeth does a full adult human set have, wisdom teeth included?", "32", ["28", "30", "36"]),
    ("day-exhaled-gas", R, "Which gas is there more of in the air we breathe out than in the air we breathe in?", "carbon dioxide", ["oxygen", "nitrogen", "helium"]),
    ("day-blue-yellow", R, "Which colour do you get by mixing blue and yellow paint?", "green", ["purple", "orange", "brown"]),
    ("day-three-dozen", Q, "How many eggs are there in three dozen?", "36", ["30", "24", "48"]),
    # maths word problems
    ("math-discount", Q, "A shirt costs $40 and is reduced by 25% in a sale. What is the sale price?", "$30", ["$35", "$25", "$15"]),
    ("math-train-speed", Q, "A train travels 180 km in 2 hours at a constant speed. What is its speed?", "90 km/h", ["60 km/h", "120 km/h", "360 km/h"]),
    ("math-pencils", Q, "Three pencils cost $1.50. How much do seven pencils cost at the same price?", "$3.50", ["$3.00", "$4.50", "$10.50"]),
    ("math-rectangle-area", Q, "A room is 8 m long and 5 m wide. What is its floor area?", "40 m²", ["26 m²", "13 m²", "80 m²"]),
    ("math-rectangle-perimeter", Q, "A garden is 8 m long and 5 m wide. How long is a fence that goes all the way round it?", "26 m", ["40 m", "13 m", "18 m"]),
    ("math-marbles", Q, "Sara has three times as many marbles as Tom. Together they have 48. How many marbles does Sara have?", "36", ["12", "16", "32"]),
    ("math-average", Q, "What is the average (mean) of 4, 8, 15 and 13?", "10", ["9", "11", "40"]),
    ("math-recipe", Q, "A recipe for 4 people uses 300 g of flour. How much flour is needed for 10 people?", "750 g", ["600 g", "1,200 g", "3,000 g"]),
    ("math-fuel", Q, "A car uses 6 litres of fuel per 100 km. How much fuel does it need for 250 km?", "15 litres", ["12 litres", "18 litres", "25 litres"]),
    ("math-meeting-end", Q, "A meeting starts at 9:45 and lasts 1 hour 50 minutes. When does it end?", "11:35", ["11:15", "11:45", "10:35"]),
    ("math-percent", Q, "What is 15% of 80?", "12", ["8", "15", "18"]),
    ("math-tank", Q, "An empty 200-litre tank is filled at 8 litres per minute. How long does it take to fill?", "25 minutes", ["20 minutes", "24 minutes", "40 minutes"]),
    ("math-prime", Q, "Which of these numbers is prime?", "29", ["21", "27", "33"]),
    ("math-square-area", Q, "A square has a perimeter of 36 cm. What is its area?", "81 cm²", ["36 cm²", "72 cm²", "144 cm²"]),
    ("math-workers", Q, "Five workers build a wall in 12 days. Working at the same rate, how long would ten workers take?", "6 days", ["24 days", "10 days", "8 days"]),
    ("math-simple-interest", Q, "$1,000 is saved at 5% simple interest per year. How much interest does it earn in 3 years?", "$150", ["$50", "$157.63", "$1,150"]),
    ("math-probability", Q, "A bag holds 3 red balls and 5 blue balls. One ball is drawn at random. What is the probability that it is red?", "3/8", ["3/5", "5/8", "1/3"]),
    ("math-sequence", Q, "What comes next in the sequence 2, 6, 18, 54, ...?", "162", ["108", "72", "216"]),
    ("math-clock-angle", Q, "What is the angle between the hour and minute hands of a clock at exactly 3 o'clock?", "90°", ["45°", "120°", "180°"]),
    ("math-ages", Q, "Tom is 4 years older than Ann. In 6 years the sum of their ages will be 40. How old is Ann now?", "12", ["14", "16", "10"]),
    ("math-hours-to-minutes", Q, "How many minutes are there in 2.5 hours?", "150", ["125", "250", "90"]),
    ("math-pizza", Q, "A pizza is cut into 8 equal slices and 3 slices are eaten. What fraction of the pizza is left?", "5/8", ["3/8", "3/5", "1/2"]),
    ("math-pens", Q, "A shop sells pens at 4 for $3. How much do 20 pens cost?", "$15", ["$12", "$60", "$80"]),
    ("math-triangle", Q, "Two angles of a triangle are 50° and 60°. What is the third angle?", "70°", ["80°", "90°", "110°"]),
    ("math-lap-speed", Q, "A runner completes a 400 m lap in 80 seconds. What is the runner's average speed?", "5 m/s", ["4 m/s", "6 m/s", "8 m/s"]),
    ("math-price-rise", Q, "A price rises from $50 to $60. By what percentage did it rise?", "20%", ["10%", "16.7%", "25%"]),
    ("math-buses", Q, "A bus leaves every 15 minutes, the first at 7:00. How many buses leave from 7:00 to 8:00, both times included?", "5", ["4", "6", "60"]),
    ("math-half-third", Q, "Half of a number is 3 more than a third of it. What is the number?", "18", ["6", "12", "36"]),
]

TRAIN = [
    ("tr-gold-symbol", R, "What is the chemical symbol for gold?", "Au", ["Ag", "Gd", "Go"]),
    ("tr-italy-capital", R, "What is the capital of Italy?", "Rome", ["Milan", "Naples", "Venice"]),
    ("tr-ringed-planet", R, "Which planet is best known for its large, bright rings?", "Saturn", ["Mars", "Mercury", "Venus"]),
    ("tr-romeo-juliet", R, "Who wrote Romeo and Juliet?", "William Shakespeare", ["Charles Dickens", "Jane Austen", "Geoffrey Chaucer"]),
    ("tr-spider-legs", R, "How many legs does a spider have?", "8", ["6", "10", "12"]),
    ("tr-tallest-animal", R, "Which is the tallest living land animal?", "the giraffe", ["the elephant", "the horse", "the camel"]),
    ("tr-change", Q, "A book costs $12. You buy three and pay with a $50 note. How much change do you get?", "$14", ["$26", "$36", "$38"]),
    ("tr-distance", Q, "A car drives at 60 km/h for 2.5 hours. How far does it go?", "150 km", ["120 km", "125 km", "180 km"]),
    ("tr-largest-organ", R, "Which is the largest organ of the human body?", "the skin", ["the liver", "the brain", "the lungs"]),
    ("tr-spain-capital", R, "What is the capital of Spain?", "Madrid", ["Barcelona", "Seville", "Lisbon"]),
    ("tr-percent", Q, "What is 20% of 150?", "30", ["20", "15", "50"]),
    ("tr-photosynthesis-out", R, "Which gas do plants give off during photosynthesis?", "oxygen", ["carbon dioxide", "nitrogen", "methane"]),
    ("tr-ww2-start", R, "In which year did the Second World War begin in Europe?", "1939", ["1914", "1941", "1945"]),
]


def build(out: Path = HERE) -> None:
    write_splits(out, TEST, TRAIN, SEED, PREFIX)


def main() -> None:
    build()
    print(f"wrote {len(TEST)} test and {len(TRAIN)} train items to {HERE}")


if __name__ == "__main__":
    main()
