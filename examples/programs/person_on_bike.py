def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    if not image_patch.exists("bicycle"):
        return "no"
    people = image_patch.find("person")
    if not people:
        return "no"
    for person in people:
        if person.verify_property("person", "riding a bicycle"):
            return "yes"
    return "no"
